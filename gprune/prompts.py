"""Chat prompts of the llava-hf LLaVA-NeXT checkpoints: the checkpoint's own chat template, optionally preceded
by the system prompt LLaVA was trained with, which the llava-hf templates leave out.

The one place that knows each checkpoint family's conversation format. The system turns are written as
LLaVA's `conversation.py` writes them (LLaVA `llava_v1` for Vicuna, LLaVA-NeXT `llava_llama_3` and
`qwen_1_5`), not as the llava-hf templates would render a system message (Llama-3's adds a newline).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import LlavaNextProcessor

from .limits import MAX_NEW_TOKENS, MAX_PROMPT_TEXT_TOKENS

TEMPLATE = "template"  # the checkpoint's chat template as it is
LLAVA = "llava"  # LLaVA's training system prompt, then the chat template
SYSTEM_PROMPTS = (TEMPLATE, LLAVA)


@dataclass(frozen=True)
class PromptFamily:
    """A checkpoint family's conversation format.

    Attributes:
        name: shown in messages and summaries.
        user_turn: how the chat template starts a user turn; with `text_model_types` (None = any) it
            recognises the family.
        system_text: LLaVA's training system prompt; None where the family was trained without one.
        system_turn: how LLaVA's conversation format writes `{system}` before the first user turn.
    """

    name: str
    user_turn: str
    text_model_types: tuple[str, ...] | None
    system_text: str | None = None
    system_turn: str = ""


PROMPT_FAMILIES = (
    # LLaVA's `mistral_instruct` conversation has an empty system prompt.
    PromptFamily("Mistral", "[INST] ", None),
    PromptFamily(
        "Vicuna", "USER: ", ("llama",),
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions.",
        "{system} ",
    ),
    PromptFamily(
        "Llama-3", "<|start_header_id|>user<|end_header_id|>\n\n", None,
        "You are a helpful language and vision assistant. You are able to understand the visual content that the "
        "user provides, and assist the user with a variety of tasks using natural language.",
        "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
    ),
    PromptFamily("Qwen2", "<|im_start|>user\n", ("qwen2",), "You are a helpful assistant.",
                 "<|im_start|>system\n{system}<|im_end|>\n"),
)


def check_system_prompt(system_prompt) -> str:
    if system_prompt not in SYSTEM_PROMPTS:
        raise ValueError(f"system_prompt must be {TEMPLATE!r} (the checkpoint's chat template as it is) or {LLAVA!r} "
                         f"(LLaVA's training system prompt first); got {system_prompt!r}")
    return system_prompt


def chat_prompt(processor: LlavaNextProcessor, text_model_type: str, question: str, system_prompt: str = TEMPLATE) -> str:
    """The prompt for one image and `question`, generation prompt added; with `system_prompt="llava"` LLaVA's
    training system prompt comes first. Raises `ValueError` for a question the prompt cannot hold."""
    check_system_prompt(system_prompt)
    if not isinstance(question, str):
        raise ValueError(f"question must be a string, got {type(question).__name__}")
    placeholder = getattr(processor, "image_token", None) or "<image>"
    if placeholder in question:  # the processor would expand it into a second image's worth of tokens
        raise ValueError(f"the question must not contain {placeholder!r}: that is the model's image placeholder, "
                         "and the image is inserted automatically; remove it")
    user_turn = _user_turn(processor, question)
    prompt = user_turn
    if system_prompt == LLAVA:
        family = _llava_family(user_turn, text_model_type)
        prompt = family.system_turn.format(system=family.system_text) + user_turn
    text_tokens = len(processor.tokenizer(prompt).input_ids)
    if text_tokens > MAX_PROMPT_TEXT_TOKENS:
        raise ValueError(
            f"the question is too long: the prompt with it takes {text_tokens} text tokens, more than the "
            f"{MAX_PROMPT_TEXT_TOKENS} kept free next to the largest image and {MAX_NEW_TOKENS} new tokens; shorten it"
        )
    return prompt


def system_text(processor: LlavaNextProcessor, text_model_type: str, system_prompt: str) -> str | None:
    """The system text `system_prompt` puts before the chat template (None for "template")."""
    if check_system_prompt(system_prompt) == TEMPLATE:
        return None
    return _llava_family(_user_turn(processor, "?"), text_model_type).system_text


def _user_turn(processor: LlavaNextProcessor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def _llava_family(user_turn: str, text_model_type: str) -> PromptFamily:
    """The family whose LLaVA training system prompt applies, or a `ValueError` saying why there is none."""
    for family in PROMPT_FAMILIES:
        if user_turn.startswith(family.user_turn) and (
                family.text_model_types is None or text_model_type in family.text_model_types):
            if family.system_text is None:
                raise ValueError(f"this checkpoint has {family.name}'s chat format, and LLaVA-NeXT's {family.name} "
                                 f"checkpoint was trained without a system prompt; use system_prompt={TEMPLATE!r}")
            return family
    raise ValueError(f"no LLaVA training system prompt is known for this checkpoint (a {text_model_type!r} model "
                     f"whose chat template starts with {user_turn[:40]!r}); use system_prompt={TEMPLATE!r}")

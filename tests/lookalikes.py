"""Scaled-down, random-weight copies of the llava-hf LLaVA-NeXT checkpoints, written in the hub's file layout.

No real checkpoint can be downloaded here, so each advertised family is imitated as closely as a few seconds
of CPU allow: the real architecture classes (Mistral / Llama / Qwen2 text, CLIP vision at 336/14 with the
llava-hf grid pinpoints, layer −2, "default" strategy), the real chat templates, tokenizers of the same
kind trained on a small corpus (SentencePiece-style BPE with byte fallback and `▁` for Mistral and Vicuna,
byte-level BPE with the Llama-3 or Qwen2 special tokens), and the files a hub download gives:

    config.json                      transformers 4.x form (`image_token_index`, `torch_dtype`, `rope_theta`)
    model-0000{1,2}-of-00002.safetensors + model.safetensors.index.json
                                     fp16 weights under the legacy names that transformers 5 renames on load
                                     (`language_model.model.layers…`, `language_model.lm_head`, `vision_tower…`,
                                     `multi_modal_projector…`, `image_newline`)
    tokenizer.json, tokenizer_config.json, special_tokens_map.json
    chat_template.json, processor_config.json, preprocessor_config.json, generation_config.json

Only widths and depths are tiny (`FAMILIES[...].text`); `FAMILIES[...].real_text` is the real language model,
for the memory estimates. Facts come from the llava-hf repositories and transformers' conversion script
(`convert_llava_next_weights_to_hf.py`: image token ids, base text models, reference prompts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, PreTrainedTokenizerFast

from gprune.tiny import CORPUS, GRID_PINPOINTS, PATCH_SIZE, TILE_SIZE, TextShape, VisionShape, build_config

SEED = 0
TINY_VISION = VisionShape(hidden=32, layers=2, heads=2, intermediate=64, projection=32)
CLIP_L_336 = VisionShape(hidden=1024, layers=24, heads=16, intermediate=4096, projection=768)

# The llava-hf chat_template.json files. Images come first in a user turn, whatever their order in the message.
MISTRAL_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<<SYS>>\\n' + message['content'][0]['text']"
    " + '\\n<</SYS>>\\n\\n' }}{% elif message['role'] == 'user' %}{{ '[INST] ' }}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'][0]['text'] + '</s> '}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\\n' + content['text'] + '<|eot_id|>' }}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# ChatML as the llava-hf Qwen2 checkpoints write it (LLaVA-NeXT's qwen_1_5 conversation format).
QWEN2_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{'<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Llama-3's pre-tokenizer split (tiktoken cl100k); Qwen2's differs only in splitting digits one by one.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Words of the templates and system prompts, so they tokenize into word-like pieces as in the real vocabularies.
EXTRA_CORPUS = """USER: ASSISTANT: user assistant system [INST] [/INST]
A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed,
and polite answers to the human's questions. You are a helpful language and vision assistant. You are able to
understand the visual content that the user provides, and assist the user with a variety of tasks using natural
language. You are a helpful assistant.
"""


@dataclass(frozen=True)
class Family:
    """One advertised checkpoint and its scaled-down copy.

    Attributes:
        key: short name used in test ids.
        hub_id: the checkpoint imitated.
        text: the copy's language model (tiny); `real_text`: the checkpoint's, for memory estimates.
        architecture: the text model's class name as config.json records it.
        base_text_model: `text_config._name_or_path` of the checkpoint.
        chat_template: its chat_template.json.
        tokenizer_kind: "sentencepiece", "llama3" or "qwen2".
        vocab_multiple: the embedding rows are the tokenizer's size rounded up to this (llava-hf pads to 64;
            Qwen2's embedding is larger than its tokenizer).
    """

    key: str
    hub_id: str
    text: TextShape
    real_text: TextShape
    architecture: str
    base_text_model: str
    chat_template: str
    tokenizer_kind: str
    vocab_multiple: int


FAMILIES = {
    "mistral": Family(
        "mistral", "llava-hf/llava-v1.6-mistral-7b-hf",
        TextShape(hidden=64, layers=4, heads=4, kv_heads=2, intermediate=128, family="mistral",
                  rope_theta=1_000_000.0, max_positions=32768),
        TextShape(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=32064, family="mistral",
                  rope_theta=1_000_000.0, max_positions=32768),
        "MistralForCausalLM", "mistralai/Mistral-7B-Instruct-v0.2", MISTRAL_TEMPLATE, "sentencepiece", 64),
    "vicuna": Family(
        "vicuna", "llava-hf/llava-v1.6-vicuna-7b-hf",
        TextShape(hidden=64, layers=4, heads=4, kv_heads=4, intermediate=128, max_positions=4096),
        TextShape(hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=11008, vocab=32064, max_positions=4096),
        "LlamaForCausalLM", "lmsys/vicuna-7b-v1.5", VICUNA_TEMPLATE, "sentencepiece", 64),
    "llama3": Family(
        "llama3", "llava-hf/llama3-llava-next-8b-hf",
        TextShape(hidden=64, layers=4, heads=4, kv_heads=2, intermediate=128, rope_theta=500_000.0, max_positions=8192),
        TextShape(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=128320,
                  rope_theta=500_000.0, max_positions=8192),
        "LlamaForCausalLM", "meta-llama/Meta-Llama-3-8B-Instruct", LLAMA3_TEMPLATE, "llama3", 64),
    "qwen2": Family(
        "qwen2", "llava-hf/llava-next-72b-hf",
        TextShape(hidden=64, layers=4, heads=4, kv_heads=4, intermediate=128, family="qwen2",
                  rope_theta=1_000_000.0, max_positions=32768),
        TextShape(hidden=8192, layers=80, heads=64, kv_heads=64, intermediate=24576, vocab=152064, family="qwen2",
                  rope_theta=1_000_000.0, max_positions=32768),
        "Qwen2ForCausalLM", "Qwen/Qwen1.5-72B-Chat", QWEN2_TEMPLATE, "qwen2", 256),
}


# ----------------------------------------------------------------------------------------------- tokenizers


def _corpus_lines() -> list[str]:
    return [line for line in (CORPUS + EXTRA_CORPUS).split("\n") if line.strip()]


def _sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-2 / Mistral kind: BPE over `▁`-joined text with byte fallback (`<0x00>`…`<0xFF>` at ids 3–258),
    `<unk>`, `<s>`, `</s>` at 0–2, `<s>` added in front; `<image>` and `<pad>` appended as llava-hf did."""
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    learner.train_from_iterator(_corpus_lines(), trainer)
    learned = json.loads(learner.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{byte:02X}>": 3 + byte for byte in range(256)}}
    for piece, _ in sorted(learned["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in learned["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", 1)])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)])
    tokenizer.add_special_tokens([AddedToken("<pad>", special=True, normalized=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})


def _byte_level_tokenizer(split: str, specials: list[str], *, bos: str | None) -> Tokenizer:
    """Byte-level BPE behind a regex split (Llama-3 / Qwen2 kind); `specials` get the ids after the vocabulary."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(_corpus_lines(), trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    steps = [processors.ByteLevel(trim_offsets=False)]
    if bos is not None:
        steps.append(processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                   special_tokens=[(bos, tokenizer.token_to_id(bos))]))
    tokenizer.post_processor = processors.Sequence(steps)
    return tokenizer


def _llama3_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-3 kind: `<|begin_of_text|>` added in front, header/turn tokens in Llama-3's order after the
    vocabulary (as 128000–128009), then `<image>` and `<pad>` (as 128256, 128257)."""
    specials = ["<|begin_of_text|>", "<|end_of_text|>", *[f"<|reserved_special_token_{i}|>" for i in range(4)],
                "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>",
                *[f"<|reserved_special_token_{i}|>" for i in range(5, 11)], "<image>", "<pad>"]
    tokenizer = _byte_level_tokenizer(LLAMA3_SPLIT, specials, bos="<|begin_of_text|>")
    # The tokenizer ends a turn with <|eot_id|>; generation_config.json names <|end_of_text|> (see _generation_config).
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})


def _qwen2_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2 kind: NFC, digits split one by one, no BOS; `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` after the
    vocabulary (as 151643–151645), then `<image>` (as 151646)."""
    tokenizer = _byte_level_tokenizer(QWEN2_SPLIT, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"], bos=None)
    tokenizer.normalizer = normalizers.NFC()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   extra_special_tokens={"image_token": "<image>"})


TOKENIZERS = {"sentencepiece": _sentencepiece_tokenizer, "llama3": _llama3_tokenizer, "qwen2": _qwen2_tokenizer}
TOKENIZER_CLASSES = {"sentencepiece": "LlamaTokenizer", "llama3": "PreTrainedTokenizerFast", "qwen2": "Qwen2Tokenizer"}


# ------------------------------------------------------------------------------------------------ the files


def build_lookalike(family: Family | str, folder: Path, *, sliding_window: int | None = None,
                    max_positions: int | None = None) -> Path:
    """Write `family`'s scaled-down checkpoint into `folder` (created) and return it.

    `sliding_window` (Mistral only) and `max_positions` override the language model's config, for tests of
    what the loader accepts. Weights are seeded: the same call writes the same files.
    """
    family = FAMILIES[family] if isinstance(family, str) else family
    text = family.text
    if sliding_window is not None:
        text = replace(text, sliding_window=sliding_window)
    if max_positions is not None:
        text = replace(text, max_positions=max_positions)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = TOKENIZERS[family.tokenizer_kind]()
    vocab = -(-len(tokenizer) // family.vocab_multiple) * family.vocab_multiple
    config = build_config(tokenizer, replace(text, vocab=vocab), TINY_VISION)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlavaNextForConditionalGeneration(config)
    _write_weights(model, folder)
    _write_json(folder / "config.json", _legacy_config(config, family))
    _write_json(folder / "generation_config.json", _generation_config(tokenizer, family))
    _write_tokenizer(tokenizer, family, folder)
    _write_json(folder / "chat_template.json", {"chat_template": family.chat_template})
    _write_json(folder / "processor_config.json", {
        "image_token": "<image>", "num_additional_image_tokens": 1, "patch_size": PATCH_SIZE,
        "processor_class": "LlavaNextProcessor", "vision_feature_select_strategy": "default",
    })
    _write_json(folder / "preprocessor_config.json", {
        "aspect_ratio_setting": "anyres", "crop_size": {"height": TILE_SIZE, "width": TILE_SIZE},
        "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True,
        "do_resize": True, "image_grid_pinpoints": GRID_PINPOINTS,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "LlavaNextImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711], "processor_class": "LlavaNextProcessor", "resample": 3,
        "rescale_factor": 1 / 255, "size": {"shortest_edge": TILE_SIZE},
    })
    return folder


def edit_config(folder: Path, **changes) -> Path:
    """Set top-level (`key=value`) or text-config (`text_config__key=value`) fields of `folder/config.json`."""
    path = Path(folder) / "config.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if key.startswith("text_config__"):
            data["text_config"][key.removeprefix("text_config__")] = value
        else:
            data[key] = value
    _write_json(path, data)
    return Path(folder)


# transformers 5 names → the names the llava-hf files still use (conversion_mapping.py maps them back).
LEGACY_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.image_newline", "image_newline"),
)


def legacy_name(name: str) -> str:
    for current, legacy in LEGACY_PREFIXES:
        if name.startswith(current):
            return legacy + name[len(current):]
    raise ValueError(f"no legacy name for {name!r}")


def _write_weights(model: LlavaNextForConditionalGeneration, folder: Path) -> None:
    """Two fp16 shards and their index, as the hub stores the 7B checkpoints."""
    tensors = {legacy_name(name): tensor.detach().to(torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    weight_map = {}
    for file_name, shard_names in shards.items():
        save_file({name: tensors[name] for name in shard_names}, folder / file_name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard_names, file_name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(folder / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def _legacy_config(config: LlavaNextConfig, family: Family) -> dict:
    """config.json as transformers 4.x wrote it for the llava-hf checkpoints (rope_theta, torch_dtype, no rope_parameters)."""
    data = config.to_dict()
    text = data["text_config"]
    text["rope_theta"] = text.pop("rope_parameters")["rope_theta"]
    text["architectures"] = [family.architecture]
    text["_name_or_path"] = family.base_text_model
    for section in (data, text, data["vision_config"]):
        section.pop("dtype", None)
        section["torch_dtype"] = "float16"
    data["architectures"] = ["LlavaNextForConditionalGeneration"]
    data["use_image_newline_parameter"] = True
    data["vocab_size"] = text["vocab_size"]
    data["transformers_version"] = "4.40.0.dev0"
    return data


def _generation_config(tokenizer: PreTrainedTokenizerFast, family: Family) -> dict:
    """What `save_pretrained` wrote from the model config: BOS/EOS/PAD only, no sampling settings. Llama-3's
    names <|end_of_text|> (Meta-Llama-3's config.json), while its tokenizer and template end turns with <|eot_id|>."""
    eos = tokenizer.convert_tokens_to_ids("<|end_of_text|>") if family.tokenizer_kind == "llama3" else tokenizer.eos_token_id
    return {"_from_model_config": True, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": eos,
            "pad_token_id": tokenizer.pad_token_id, "transformers_version": "4.40.0.dev0"}


def _write_tokenizer(tokenizer: PreTrainedTokenizerFast, family: Family, folder: Path) -> None:
    """tokenizer.json as saved, tokenizer_config.json and special_tokens_map.json as transformers 4.x wrote them."""
    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    data = json.loads(path.read_text())
    for key in ("backend", "extra_special_tokens"):  # transformers 5 only
        data.pop(key, None)
    special = {key: data[key] for key in ("bos_token", "eos_token", "unk_token", "pad_token") if data.get(key)}
    _write_json(folder / "special_tokens_map.json", special)
    data["tokenizer_class"] = TOKENIZER_CLASSES[family.tokenizer_kind]
    data["model_max_length"] = family.text.max_positions
    if family.tokenizer_kind == "sentencepiece":
        data.update(add_bos_token=True, add_eos_token=False, legacy=False)
    _write_json(path, data)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")

"""Limits every prompt and answer respects; the loader refuses checkpoints whose positions cannot hold them."""

MAX_NEW_TOKENS = 512
# Text tokens of one prompt as the tokenizer counts them: chat template, system prompt, question, BOS and the
# single `<image>` marker (which the processor then expands into the visual tokens).
MAX_PROMPT_TEXT_TOKENS = 600

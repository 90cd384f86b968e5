"""A random-weight LLaVA-NeXT built offline in about a second, for tests and GPU-less demos.

The vision geometry is the real one (CLIP-336/14: 24×24 = 576 tokens per tile, the llava-hf grid
pinpoints, layer −2, CLS dropped), so the processor's placeholder counts and the packed layout match the
7B/8B checkpoints exactly; only the widths and depths are tiny. The outputs are meaningless text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

SEED = 0
TILE_SIZE = 336
PATCH_SIZE = 14
GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
VOCAB_SIZE = 1024

# Mistral-style template in the llava-hf message format: images first, then the text of each user turn.
# `[/INST]` already ends the prompt, so `add_generation_prompt` adds nothing (as in Mistral's template).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST] ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{ item['text'] }}{% endfor %}"
    "{% endif %}"
    "{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if message['content'] is string %}{{ ' ' + message['content'] }}{% else %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{ ' ' + item['text'] }}{% endfor %}"
    "{% endif %}"
    "{{ '</s>' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported') }}"
    "{% endif %}"
    "{% endfor %}"
)

# Enough ordinary English for ~1000 byte-level BPE tokens, so prompts tokenize into word-like pieces.
CORPUS = """
What is shown in this image? Describe the picture in detail. How many people are in the photo?
What color is the car parked on the street? Is there a dog in the garden? What is the man holding?
Where was this photograph taken? What time of day does it seem to be? What is written on the sign?
Read the text on the board. Which animal is bigger? Are the lights on or off? What is the weather like?
The image shows a small kitchen with a white table, two wooden chairs and a bowl of green apples.
A woman in a blue jacket is walking her brown dog along a quiet road next to the river.
Three children are playing football on a grassy field while their parents watch from a bench.
A red bus stops at the corner of a busy city street, and people wait under the yellow umbrella.
The cat is sleeping on a soft orange blanket near the open window in the afternoon sun.
There is a tall building with many windows behind the trees, and the sky is clear and bright.
On the desk there is a laptop, a cup of coffee, a pair of glasses and a stack of old books.
A train crosses a long bridge over the valley, and snow covers the tops of the distant mountains.
The boy wears a striped shirt and holds a kite; the girl beside him is eating an ice cream.
Two horses stand in a fence near the barn, and a farmer carries a bucket of water to them.
The plate has a slice of pizza with cheese, tomato and olives, and a glass of lemonade.
A man rides a bicycle past the market where fruit and vegetables are sold in wooden boxes.
The airplane is flying above the clouds, and the wing reflects the light of the setting sun.
In the living room a television is mounted on the wall above a fireplace and a grey sofa.
A group of friends sits around a campfire at night, laughing and telling stories under the stars.
The stop sign is red with white letters, and a speed limit sign says thirty miles per hour.
A black and white photograph of an old harbour with fishing boats, ropes, nets and seagulls.
The chart shows the number of visitors each month; the highest value is in July and August.
The menu lists soup, salad, sandwiches, pasta and dessert, with prices written next to each dish.
The elephant is drinking water from the lake while a small bird sits on its back.
Several cars are waiting at the traffic light, and a cyclist is crossing the road on the left.
A young woman is reading a newspaper on the train, and an older man is looking out of the window.
The bathroom has a white sink, a round mirror, blue tiles and a towel hanging on the door.
A chef in a white hat is cutting onions and carrots on a board in a restaurant kitchen.
The beach is crowded with people swimming, surfing and lying on towels under colourful umbrellas.
A clock on the tower shows a quarter past ten, and pigeons are flying around the square.
The little girl is feeding ducks at the pond with pieces of bread from a paper bag.
Yes. No. Maybe. One, two, three, four, five, six, seven, eight, nine, ten, twenty, hundred.
Left, right, top, bottom, middle, front, back, inside, outside, above, below, between, behind.
Red, orange, yellow, green, blue, purple, pink, brown, black, white, grey, gold, silver.
The answer is that the object in the centre of the image is a vase of fresh flowers.
I can see a street, some houses, a few trees, a parked truck and a person on the sidewalk.
The scene looks calm and peaceful; the colours are soft and the light comes from the right.
This is a screenshot of a web page with a title, a search box, buttons and a list of links.
The document contains a table with names, dates, numbers and a short note at the bottom.
A baseball player swings the bat as the ball approaches, and the crowd cheers in the stadium.
A skier goes down the steep slope, leaving tracks in the fresh powder snow behind them.
The giraffe reaches the leaves at the top of the tree, and a zebra grazes in the grass.
A surfer rides a large wave near the rocks, and the water is deep blue and white with foam.
Please answer the question using a single word or phrase. Explain your reasoning step by step.
"""


def build_tokenizer(corpus: str = CORPUS, vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Byte-level BPE (round-trips any text) trained on `corpus`; `<s>` is added in front, like Mistral's."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus.split("\n"), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        add_bos_token=True,
        add_eos_token=False,
    )


@dataclass(frozen=True)
class TextShape:
    """Size of the language model; `vocab=None` takes the tokenizer's size."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int | None = None
    # "llama", "mistral" or "qwen2": the decoder layout is the same (Qwen2 adds q/k/v biases); Mistral is
    # LLaVA-NeXT-7B's, Llama Vicuna's and Llama-3's, Qwen2 the 72B/110B checkpoints'.
    family: str = "llama"
    rope_theta: float = 10000.0
    max_positions: int = 4096
    sliding_window: int | None = None  # Mistral only; None = full causal attention (as in Mistral-7B-v0.2)


@dataclass(frozen=True)
class VisionShape:
    """Width and depth of the CLIP tower; its geometry stays CLIP-336/14."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    projection: int


# ≥ 3 text layers so FastV's default K = 2 prunes before some layers.
TINY_TEXT = TextShape(hidden=64, layers=4, heads=4, kv_heads=2, intermediate=128)
TINY_VISION = VisionShape(hidden=32, layers=2, heads=2, intermediate=64, projection=32)


def build_config(tokenizer: PreTrainedTokenizerFast, text: TextShape = TINY_TEXT, vision: VisionShape = TINY_VISION) -> LlavaNextConfig:
    """A LLaVA-NeXT config with the real geometry (CLIP-336/14, llava-hf pinpoints) at the given sizes."""
    vision_config = CLIPVisionConfig(
        image_size=TILE_SIZE, patch_size=PATCH_SIZE, hidden_size=vision.hidden, intermediate_size=vision.intermediate,
        num_hidden_layers=vision.layers, num_attention_heads=vision.heads, projection_dim=vision.projection,
    )
    common = dict(
        vocab_size=text.vocab or len(tokenizer), hidden_size=text.hidden, intermediate_size=text.intermediate,
        num_hidden_layers=text.layers, num_attention_heads=text.heads, num_key_value_heads=text.kv_heads,
        max_position_embeddings=text.max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        rope_theta=text.rope_theta,
    )
    if text.sliding_window is not None and text.family != "mistral":
        raise ValueError(f"sliding_window is a Mistral setting; the {text.family!r} family has none")
    if text.family == "mistral":
        text_config = MistralConfig(**common, sliding_window=text.sliding_window)
    elif text.family == "qwen2":
        text_config = Qwen2Config(**common)
    elif text.family == "llama":
        text_config = LlamaConfig(**common)
    else:
        raise ValueError(f"unknown text family {text.family!r}; use 'llama', 'mistral' or 'qwen2'")
    config = LlavaNextConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    return config


def build_processor(tokenizer: PreTrainedTokenizerFast) -> LlavaNextProcessor:
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": TILE_SIZE},
        crop_size={"height": TILE_SIZE, "width": TILE_SIZE},
        image_grid_pinpoints=GRID_PINPOINTS,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny() -> tuple[LlavaNextForConditionalGeneration, LlavaNextProcessor]:
    """Return `(model, processor)`: fp32, eval mode, on the CPU, identical weights on every call.

    The weights come from a forked RNG seeded with `SEED`, so the caller's random state is untouched.
    """
    tokenizer = build_tokenizer()
    config = build_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlavaNextForConditionalGeneration(config)
    return model.to(torch.float32).eval(), build_processor(tokenizer)

"""What `load_model` refuses before reading any weight, what it loads in which dtype, and the prompt limits.

Each refusal uses a look-alike checkpoint (tests/lookalikes.py) whose config.json is edited; its weight files
are deleted first, so the message can only come from the config checks.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import LlavaNextConfig

from gprune import AnalysisConfig, encode, load_model
from gprune.checkpoint import GIB, choose_dtype, max_visual_tokens, parameter_count, required_bytes, worst_case_positions
from gprune.limits import MAX_PROMPT_TEXT_TOKENS
from gprune.prompts import chat_prompt
from gprune.tiny import build_config
from lookalikes import CLIP_L_336, FAMILIES, TOKENIZERS, build_lookalike, edit_config

# Parameters of the real-size configs; the hub lists 7.57 B, 7.06 B, 8.36 B and 72.7 B for these checkpoints.
HUB_PARAMETERS = {"mistral": 7_566_747_648, "vicuna": 7_063_431_168, "llama3": 8_355_276_800, "qwen2": 72_666_949_632}


@pytest.fixture
def config_only(tmp_path):
    """A look-alike checkpoint without its weights: anything that loads must have been refused earlier."""
    def make(family="mistral", **changes):
        folder = build_lookalike(family, tmp_path / family)
        for shard in folder.glob("model*.safetensors*"):
            shard.unlink()
        return str(edit_config(folder, **changes))
    return make


@pytest.fixture(scope="module")
def real_configs():
    """The real-size configs of the four families (built from their shapes, never allocated)."""
    return {key: build_config(TOKENIZERS[family.tokenizer_kind](), family.real_text, CLIP_L_336)
            for key, family in FAMILIES.items()}


def test_an_unchanged_config_gets_as_far_as_the_missing_weights(config_only):
    with pytest.raises(ValueError, match="could not be loaded"):
        load_model(config_only(), device="cpu")


def test_full_feature_strategy_is_refused(config_only):
    # Loaded anyway, it failed at the first Run: "... 2340 placeholders, got 2341".
    with pytest.raises(ValueError, match="selects vision features with 'full'; only 'default'.*Use llava-hf/"):
        load_model(config_only(vision_feature_select_strategy="full"), device="cpu")


def test_several_feature_layers_are_refused(config_only):
    with pytest.raises(ValueError, match=r"takes vision features from \[-2, -5\]; only a single layer \(an integer"):
        load_model(config_only(vision_feature_layer=[-2, -5]), device="cpu")


@pytest.mark.parametrize("layer", ["-2", 1.5, True])
def test_a_config_transformers_rejects_is_a_value_error(config_only, layer):
    with pytest.raises(ValueError, match="has an invalid config.json .*vision_feature_layer.*use one of llava-hf/"):
        load_model(config_only(vision_feature_layer=layer), device="cpu")


def test_too_few_positions_are_refused(config_only):
    needed = 2928 - 1 + MAX_PROMPT_TEXT_TOKENS + 512
    with pytest.raises(ValueError, match=f"has {needed - 1} positions .*fewer than the {needed} .*2928 visual tokens"):
        load_model(config_only("vicuna", text_config__max_position_embeddings=needed - 1), device="cpu")


def test_worst_case_prompt_and_the_real_position_counts(real_configs):
    for key, config in real_configs.items():
        assert max_visual_tokens(config) == 576 + 48 * 49  # 672×672: 2×2 tiles, no unpadding
        assert worst_case_positions(config) <= config.text_config.max_position_embeddings, key
    assert real_configs["vicuna"].text_config.max_position_embeddings == 4096  # the tightest: 4039 needed


def test_parameter_counts_match_the_hub(real_configs):
    assert {key: parameter_count(config) for key, config in real_configs.items()} == HUB_PARAMETERS


def test_cpu_loads_bf16_when_fp32_does_not_fit(real_configs):
    """What a 24 GiB machine does with the 7B/8B checkpoints (no weights needed to decide)."""
    for key in ("mistral", "vicuna", "llama3"):
        config = real_configs[key]
        parameters = parameter_count(config)
        fp32, bf16 = required_bytes(config, torch.float32, parameters), required_bytes(config, torch.bfloat16, parameters)
        assert 26 * GIB < parameters * 4 < fp32 and bf16 < 20 * GIB, key
        assert choose_dtype(config, torch.device("cpu"), 24 * GIB, key) == torch.bfloat16
        assert choose_dtype(config, torch.device("cpu"), 48 * GIB, key) == torch.float32
        assert choose_dtype(config, torch.device("cuda"), 48 * GIB, key) == torch.bfloat16


def test_a_model_larger_than_the_device_is_refused_with_the_estimate(real_configs, config_only):
    # LLaVA-NeXT-72B in bf16: 135 GiB of weights + its KV cache, more than one 141 GB H200 holds.
    with pytest.raises(ValueError, match=r"does not fit in memory: it needs about 146\.2 GiB in bfloat16 \(72\.67 B parameters"):
        choose_dtype(real_configs["qwen2"], torch.device("cuda"), 141 * 10**9, "llava-hf/llava-next-72b-hf")
    with pytest.raises(ValueError, match=r"does not fit in memory: .* but cpu has 0\.0 GiB available"):
        load_model(config_only(), device="cpu", available_memory=2**20)


def test_bf16_on_the_cpu_through_load_model(tmp_path):
    folder = build_lookalike("llama3", tmp_path)
    config = LlavaNextConfig.from_pretrained(folder)
    parameters = parameter_count(config)
    just_bf16 = required_bytes(config, torch.bfloat16, parameters)
    assert load_model(str(folder), device="cpu", available_memory=just_bf16).dtype == torch.bfloat16
    assert load_model(str(folder), device="cpu", available_memory=just_bf16 * 2).dtype == torch.float32


# -------------------------------------------------------------------------------------------------- prompts


def test_a_question_too_long_for_the_positions_is_refused(tiny_model):
    question = "🙂" * 500  # 500 characters, as the app allows, but four byte tokens each
    with pytest.raises(ValueError, match=rf"the question is too long: .* more than the {MAX_PROMPT_TEXT_TOKENS} "):
        encode(tiny_model, Image.new("RGB", (64, 48)), question)
    assert tiny_model.prompt("x" * 500)  # 500 ordinary characters fit


def test_system_prompt_setting_is_validated(tiny_model):
    with pytest.raises(ValueError, match="system_prompt must be 'template' .* or 'llava'"):
        AnalysisConfig(system_prompt="default").validate(4)
    with pytest.raises(ValueError, match="system_prompt must be"):
        tiny_model.prompt("hi", "LLaVA")


def test_no_llava_system_prompt_for_an_unknown_family(tmp_path):
    """ChatML on a Llama model (Yi-34B's format) is not the Qwen2 family: no training prompt is guessed."""
    processor = load_model(str(build_lookalike("qwen2", tmp_path)), device="cpu").processor
    with pytest.raises(ValueError, match="no LLaVA training system prompt is known for this checkpoint"):
        chat_prompt(processor, "llama", "hi", "llava")
    assert chat_prompt(processor, "qwen2", "hi", "llava").startswith("<|im_start|>system\nYou are a helpful assistant.")


def test_the_mistral_lookalike_takes_a_sliding_window(tmp_path):
    folder = build_lookalike("mistral", tmp_path / "window", sliding_window=4096)
    assert LlavaNextConfig.from_pretrained(folder).text_config.sliding_window == 4096
    with pytest.raises(ValueError, match="sliding_window is a Mistral setting"):
        build_lookalike("vicuna", tmp_path / "no-window", sliding_window=4096)

"""The advertised checkpoints, imitated offline (tests/lookalikes.py: real architectures, templates, tokenizer
kinds and hub file layout at tiny widths), loaded with `load_model(dir)` and run through the project's public
functions; every number is compared with plain transformers on the same files, in fp32 and in bf16.

bf16 is compared with transformers' bf16 (same dtype, same weights), not with our fp32 answers: random
weights give near-tied logits whose argmax bf16 rounding can flip, so equal fp32 and bf16 answers would be luck.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

from conftest import synthetic_image
from gprune import METHODS, AnalysisConfig, analyze, answer_stability, encode, load_model, run_method
from gprune.__main__ import main
from gprune.checkpoint import parameter_count, required_bytes
from gprune.pipeline import Prompt, answer_log_probabilities, kept_sequence
from gprune.result import Selection
from lookalikes import FAMILIES, LEGACY_PREFIXES

QUESTION = "What is shown in this image?"
NEW_TOKENS = 8
FASTV_LAYER = 2
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# The prompt strings of the real checkpoints (transformers' conversion script checks the same ones against
# the original LLaVA code), with the chat template as it is and with LLaVA's training system prompt first.
VICUNA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
LLAMA3_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content that "
                 "the user provides, and assist the user with a variety of tasks using natural language.")
LLAMA3_TURN = ("<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is shown in this image?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n")
QWEN2_TURN = "<|im_start|>user\n<image>\nWhat is shown in this image?<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = {
    "mistral": ("[INST] <image>\nWhat is shown in this image? [/INST]", None),
    "vicuna": ("USER: <image>\nWhat is shown in this image? ASSISTANT:",
               VICUNA_SYSTEM + " USER: <image>\nWhat is shown in this image? ASSISTANT:"),
    "llama3": (LLAMA3_TURN, f"<|start_header_id|>system<|end_header_id|>\n\n{LLAMA3_SYSTEM}<|eot_id|>" + LLAMA3_TURN),
    "qwen2": (QWEN2_TURN, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + QWEN2_TURN),
}
CASES = [(family, dtype) for family in FAMILIES for dtype in DTYPES]


@pytest.fixture(scope="module")
def image():
    return synthetic_image(640, 480)


def load_in(folder, dtype: torch.dtype):
    """`load_model` on the CPU with just enough memory declared for `dtype` (fp32 when it fits, else bf16)."""
    config = LlavaNextConfig.from_pretrained(folder)
    loaded = load_model(str(folder), device="cpu",
                        available_memory=required_bytes(config, dtype, parameter_count(config)))
    assert loaded.dtype == dtype
    return loaded


@dataclass
class Case:
    """One family in one dtype, with our results and transformers' on the same inputs."""

    family: str
    loaded: object
    encoded: object
    inputs: dict
    reference: object  # our unpruned PruneResult
    eos_ids: set


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-{d}" for f, d in CASES])
def case(request, lookalike_dirs, image):
    family, dtype_name = request.param
    loaded = load_in(lookalike_dirs[family], DTYPES[dtype_name])
    encoded = encode(loaded, image, QUESTION)
    inputs = dict(loaded.processor(images=image, text=loaded.prompt(QUESTION), return_tensors="pt"))
    inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
    reference = run_method(loaded, encoded, "unpruned", AnalysisConfig(max_new_tokens=NEW_TOKENS))
    generation_eos = loaded.model.generation_config.eos_token_id
    eos_ids = {loaded.processor.tokenizer.eos_token_id, *([generation_eos] if isinstance(generation_eos, int) else generation_eos)}
    return Case(family, loaded, encoded, inputs, reference, eos_ids)


def until_eos(ids: list[int], eos_ids: set) -> list[int]:
    stops = [i for i, token in enumerate(ids) if token in eos_ids]
    return ids[: stops[0]] if stops else ids


# ------------------------------------------------------------------------------------------ files and prompts


@pytest.mark.parametrize("family", FAMILIES)
def test_the_files_have_the_hub_layout_and_load_like_plain_transformers(lookalike_dirs, family):
    folder = lookalike_dirs[family]
    assert {"config.json", "model.safetensors.index.json", "chat_template.json", "processor_config.json",
            "preprocessor_config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json"} <= \
        {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["transformers_version"].startswith("4.") and "image_token_index" in config
    assert config["text_config"]["model_type"] == FAMILIES[family].text.family
    assert config["vision_config"]["image_size"] == 336 and config["vision_config"]["patch_size"] == 14
    names = set()
    for shard in sorted(folder.glob("model-*.safetensors")):
        with safe_open(shard, "pt") as weights:
            names |= set(weights.keys())
    legacy = tuple(prefix for _, prefix in LEGACY_PREFIXES)
    assert names and all(name.startswith(legacy) for name in names)  # only the old names are stored

    ours = load_model(str(folder), device="cpu").model
    plain, info = LlavaNextForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert sum(p.numel() for p in ours.parameters()) == parameter_count(ours.config)
    state, expected = ours.state_dict(), plain.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_strings_are_the_checkpoints(lookalike_dirs, family):
    loaded = load_model(str(lookalike_dirs[family]), device="cpu")
    template_prompt, llava_prompt = PROMPTS[family]
    assert loaded.prompt(QUESTION) == template_prompt
    assert loaded.system_text("template") is None
    if llava_prompt is None:
        with pytest.raises(ValueError, match="trained without a system prompt; use system_prompt='template'"):
            loaded.prompt(QUESTION, "llava")
    else:
        assert loaded.prompt(QUESTION, "llava") == llava_prompt
        assert loaded.system_text("llava") in llava_prompt


def test_one_bos_and_one_placeholder_per_packed_feature(case):
    ids = case.encoded.input_ids[0].tolist()
    bos = case.loaded.processor.tokenizer.bos_token_id
    if case.family == "qwen2":
        assert bos is None  # Qwen2's tokenizer has no BOS
    else:
        assert ids[0] == bos and ids.count(bos) == 1
    assert torch.equal(case.encoded.input_ids, case.inputs["input_ids"])
    placeholders = ids.count(case.loaded.model.config.image_token_id)
    assert placeholders == case.encoded.packed_features.shape[0] == case.encoded.layout.n_tokens == 2340


# ----------------------------------------------------------------------------------- numbers vs transformers


def test_prefill_equals_the_transformers_forward(case):
    """Teacher-forced log p(our greedy answer): our layer-by-layer prefill vs `model(**inputs)`."""
    answer = case.reference.answer_token_ids
    assert answer
    full = Selection(kept_positions=np.arange(case.encoded.packed_features.shape[0]))
    prompt = Prompt(*kept_sequence(case.encoded, full), case.encoded.length)
    ours = answer_log_probabilities(case.loaded, [prompt], answer)[0]
    inputs = dict(case.inputs)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([answer])], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    with torch.no_grad():
        logits = case.loaded.model(**inputs).logits[0, -len(answer) - 1 : -1].float()
    theirs = float(logits.log_softmax(-1).gather(1, torch.tensor(answer)[:, None]).sum())
    # Measured: identical bits in both dtypes. A bf16 logit near 0.5 has an ulp of 0.002; allow two per token.
    tolerance = 1e-4 if case.loaded.dtype == torch.float32 else 4e-3 * len(answer)
    assert ours == pytest.approx(theirs, abs=tolerance)


def test_greedy_answer_equals_transformers_generate(case):
    with torch.no_grad():
        output = case.loaded.model.generate(**case.inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    theirs = output[0, case.inputs["input_ids"].shape[1]:].tolist()
    assert until_eos(case.reference.answer_token_ids, case.eos_ids) == until_eos(theirs, case.eos_ids)


def test_fastv_row_equals_eager_attention(case, lookalike_dirs):
    """FastV's scoring row (last prompt token, head-averaged, layer K−1) against transformers' eager attention."""
    result = run_method(case.loaded, case.encoded, "fastv",
                        AnalysisConfig(fastv_layer=FASTV_LAYER, keep_ratio=0.25, max_new_tokens=1))
    ours = torch.as_tensor(result.selection.scores[0])
    eager = LlavaNextForConditionalGeneration.from_pretrained(lookalike_dirs[case.family], dtype=case.loaded.dtype,
                                                              attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = eager(**case.inputs, output_attentions=True).attentions
    row = attentions[FASTV_LAYER - 1][0, :, -1].float().mean(0)[case.encoded.image_start : case.encoded.image_end]
    # Measured largest relative differences: 1.4e-7 (fp32) and 2.1e-3 (bf16: eager rounds the probabilities to
    # bf16 before the head mean, we keep the row in fp32).
    if case.loaded.dtype == torch.float32:
        torch.testing.assert_close(ours, row, rtol=1e-5, atol=1e-10)
    else:
        torch.testing.assert_close(ours, row, rtol=5e-3, atol=1e-9)


# ------------------------------------------------------------------------------------ the rest of the pipeline


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_and_the_sweep_run(lookalike_dirs, image, family):
    loaded = load_model(str(lookalike_dirs[family]), device="cpu")
    system_prompt = "template" if family == "mistral" else "llava"
    config = AnalysisConfig(keep_ratio=0.25, max_new_tokens=2, iterations=3, system_prompt=system_prompt)
    analysis = analyze(loaded, image, QUESTION, config)
    assert {result.tokens_after for result in analysis.results.values()} == {144 + 432 + 36}
    assert analysis.summary()["prompt"] == {"system_prompt": system_prompt, "system_text": loaded.system_text(system_prompt)}
    encoded = encode(loaded, image, QUESTION, system_prompt=system_prompt)
    assert encoded.length == analysis.reference.sequence_before  # the analysis used the same prompt
    curves = answer_stability(loaded, encoded, [5, 6], [1.0, 0.5], config)
    for method in METHODS:
        assert curves[method][0] == pytest.approx(curves["unpruned"][0], abs=1e-4)


def test_cli_on_a_checkpoint_directory(lookalike_dirs, tmp_path, image):
    image_path = tmp_path / "image.png"
    image.save(image_path)
    code = main([str(image_path), QUESTION, "--model", str(lookalike_dirs["llama3"]), "--methods", "gprune,fastv",
                 "--max-new-tokens", "2", "--system-prompt", "llava", "--out", str(tmp_path / "out")])
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["prompt"] == {"system_prompt": "llava", "system_text": LLAMA3_SYSTEM}
    assert summary["random_weights"] is False and set(summary["results"]) == {"gprune", "fastv"}

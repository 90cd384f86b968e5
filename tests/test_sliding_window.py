"""Mistral's sliding window in our layer loop: over original position ids, in the masks and in FastV's row."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import LlavaNextForConditionalGeneration

from conftest import synthetic_image
from gprune import AnalysisConfig, encode
from gprune.analysis import method_prompt
from gprune.llm import FastVPlan, Rows, prefill
from gprune.loading import LoadedModel
from gprune.pipeline import Prompt, generate
from gprune.tiny import TINY_TEXT, build_config, build_processor, build_tokenizer

WINDOW = 100
QUESTION = "What is in the image?"


@pytest.fixture(scope="module")
def windowed() -> LoadedModel:
    """The tiny model's shapes with a Mistral decoder whose sliding window (100) is far shorter than a prompt."""
    tokenizer = build_tokenizer()
    config = build_config(tokenizer, dataclasses.replace(TINY_TEXT, family="mistral"))
    config.text_config.sliding_window = WINDOW
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlavaNextForConditionalGeneration(config).eval()
    return LoadedModel(model, build_processor(tokenizer), "tiny-mistral-window", random_weights=True)


@pytest.fixture(scope="module")
def encoded(windowed):
    return encode(windowed, synthetic_image(), QUESTION)


@torch.no_grad()
def last_logits(loaded, prompt: Prompt, fastv: FastVPlan | None = None) -> torch.Tensor:
    rows = Rows(prompt.inputs_embeds, prompt.sequence_index[None], torch.ones_like(prompt.sequence_index, dtype=torch.bool)[None])
    out = prefill(loaded.model.model.language_model, rows, fastv)
    return loaded.model.lm_head(out.hidden[:, -1])[0]


def test_unpruned_prefill_equals_transformers_with_its_window(windowed, encoded):
    prompt, _ = method_prompt(encoded, "unpruned", AnalysisConfig(), 1.0)
    with torch.no_grad():
        reference = windowed.model.lm_head(
            windowed.model.model.language_model(inputs_embeds=prompt.inputs_embeds).last_hidden_state[:, -1])[0]
    torch.testing.assert_close(last_logits(windowed, prompt), reference, rtol=1e-4, atol=1e-5)
    windowed.model.config.text_config.sliding_window = None  # the window matters for this prompt
    try:
        assert (last_logits(windowed, prompt) - reference).abs().max() > 1e-3
    finally:
        windowed.model.config.text_config.sliding_window = WINDOW


def test_window_counts_original_positions_not_sequence_indices(windowed, encoded):
    """At keep ratio 0.01 the first prompt token is < 100 tokens before the last one in the pruned sequence but
    ~2,360 positions before it: it must not reach the last token's logits (4 layers × 100 positions)."""
    prompt, _ = method_prompt(encoded, "l2norm", AnalysisConfig(), 0.01)
    assert prompt.inputs_embeds.shape[1] < WINDOW < int(prompt.sequence_index[-1])
    changed_embeds = prompt.inputs_embeds.clone()
    changed_embeds[0, 0] += 5.0
    changed = Prompt(prompt.sequence_index, changed_embeds, prompt.length)
    assert torch.equal(last_logits(windowed, prompt), last_logits(windowed, changed))
    # Without a window the same change reaches the last token: the test can fail.
    windowed.model.config.text_config.sliding_window = None
    try:
        assert not torch.equal(last_logits(windowed, prompt), last_logits(windowed, changed))
    finally:
        windowed.model.config.text_config.sliding_window = WINDOW


def test_fastv_row_equals_eager_attention_with_the_window(windowed, encoded):
    layer_k = 2
    model = windowed.model
    inputs = windowed.processor(images=synthetic_image(), text=windowed.prompt(QUESTION), return_tensors="pt")
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            eager = model(**inputs, output_attentions=True).attentions[layer_k - 1][0, :, -1].mean(0)
    finally:
        model.set_attn_implementation("sdpa")
    prompt, _ = method_prompt(encoded, "fastv", AnalysisConfig(fastv_layer=layer_k), 0.5)
    _, span, choose = prompt.fastv
    captured = {}

    def capture(row, attention):
        captured["row"] = attention
        return choose(attention)

    last_logits(windowed, prompt, FastVPlan(layer_k, (span,), (encoded.length - 1,), capture))
    expected = eager[encoded.image_start:encoded.image_end]
    torch.testing.assert_close(captured["row"], expected, rtol=1e-4, atol=1e-6)
    assert int((expected > 0).sum()) < WINDOW  # only the image tokens inside the window get attention


def test_cached_decode_with_the_window_equals_recomputation(windowed, encoded):
    prompt, _ = method_prompt(encoded, "gprune", AnalysisConfig(), 0.25)
    generation = generate(windowed, encoded, prompt.sequence_index, prompt.inputs_embeds, max_new_tokens=6)
    embed = windowed.model.get_input_embeddings()
    ids: list[int] = []
    for step in range(len(generation.answer_token_ids)):
        extra = embed(torch.tensor(ids, dtype=torch.long)[None])
        full = Prompt(torch.cat([prompt.sequence_index, encoded.length + torch.arange(step)]),
                      torch.cat([prompt.inputs_embeds, extra], dim=1), encoded.length)
        ids.append(int(last_logits(windowed, full).argmax()))
    assert ids == generation.answer_token_ids and len(ids) == 6


def test_patched_generate_keeps_the_window(windowed, encoded):
    from gprune import analyze, patch, unpatch

    config = AnalysisConfig(methods=("gprune",), keep_ratio=0.25, max_new_tokens=6)
    ours = analyze(windowed, synthetic_image(), QUESTION, config).results["gprune"].answer_token_ids
    inputs = windowed.processor(images=synthetic_image(), text=windowed.prompt(QUESTION), return_tensors="pt")
    patch(windowed.model, method="gprune", keep_ratio=0.25)
    try:
        with torch.no_grad():
            out = windowed.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    finally:
        unpatch(windowed.model)
    assert out[0, inputs["input_ids"].shape[1]:].tolist()[: len(ours)] == ours

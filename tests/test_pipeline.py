"""The model plumbing on the tiny random-weight LLaVA-NeXT: positions, masks, caches, FastV, budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gprune import METHODS, AnalysisConfig, analyze, answer_stability, encode
from gprune.analysis import method_prompt
from gprune.llm import FastVPlan, Rows, prefill, query_attention
from gprune.pipeline import Prompt, answer_log_probabilities, generate, kept_sequence
from gprune.result import Selection

QUESTION = "What is in the image?"


@pytest.fixture(scope="module")
def image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def encoded(tiny_model, image):
    return encode(tiny_model, image, QUESTION)


def hf_inputs(tiny_model, image):
    return tiny_model.processor(images=image, text=tiny_model.prompt(QUESTION), return_tensors="pt")


@torch.no_grad()
def prefill_logits(tiny_model, sequence_index, embeds, fastv=None) -> torch.Tensor:
    rows = Rows(embeds, sequence_index[None], torch.ones_like(sequence_index, dtype=torch.bool)[None])
    out = prefill(tiny_model.model.model.language_model, rows, fastv)
    return tiny_model.model.lm_head(out.hidden[:, -1])[0]


def prompt_logits(tiny_model, prompt: Prompt) -> torch.Tensor:
    fastv = None
    if prompt.fastv is not None:
        layer, span, choose = prompt.fastv
        fastv = FastVPlan(layer, (span,), (prompt.inputs_embeds.shape[1] - 1,), lambda row, attention: choose(attention))
    return prefill_logits(tiny_model, prompt.sequence_index, prompt.inputs_embeds, fastv)


def test_encoded_prompt_matches_the_model(tiny_model, image, encoded):
    assert encoded.packed_features.shape[0] == encoded.layout.n_tokens == 2340
    assert encoded.image_end - encoded.image_start == 2340
    with torch.no_grad():
        reference = tiny_model.model(**hf_inputs(tiny_model, image)).logits[0, -1]
    full = Selection(kept_positions=np.arange(2340))
    torch.testing.assert_close(prefill_logits(tiny_model, *kept_sequence(encoded, full)), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ("unpruned",) + METHODS)
def test_keep_ratio_one_reproduces_the_unpruned_logits(tiny_model, encoded, method):
    config = AnalysisConfig(keep_ratio=1.0)
    expected = prompt_logits(tiny_model, method_prompt(encoded, "unpruned", config, 1.0)[0])
    prompt, selection = method_prompt(encoded, method, config, 1.0)
    assert prompt.inputs_embeds.shape[1] == encoded.length
    torch.testing.assert_close(prompt_logits(tiny_model, prompt), expected, rtol=0, atol=0)


def test_pruned_prefill_matches_transformers_with_original_positions(tiny_model, encoded):
    prompt, _ = method_prompt(encoded, "gprune", AnalysisConfig(), 0.25)
    sequence_index, embeds = prompt.sequence_index, prompt.inputs_embeds
    language_model = tiny_model.model.model.language_model
    with torch.no_grad():
        hidden = language_model(inputs_embeds=embeds, position_ids=sequence_index[None],
                                attention_mask=torch.ones_like(sequence_index)[None]).last_hidden_state
    reference = tiny_model.model.lm_head(hidden[:, -1])[0]
    torch.testing.assert_close(prefill_logits(tiny_model, sequence_index, embeds), reference, rtol=1e-4, atol=1e-5)


def test_cached_greedy_decode_equals_full_recompute(tiny_model, encoded):
    """Generated token t sits at position L_original + t; the cache must give what recomputation gives."""
    prompt, _ = method_prompt(encoded, "l2norm", AnalysisConfig(), 0.25)
    sequence_index, embeds = prompt.sequence_index, prompt.inputs_embeds
    generation = generate(tiny_model, encoded, sequence_index, embeds, max_new_tokens=6)
    language_model = tiny_model.model.model.language_model
    embed = tiny_model.model.get_input_embeddings()
    ids: list[int] = []
    with torch.no_grad():
        for step in range(len(generation.answer_token_ids)):
            extra = torch.tensor(ids, dtype=torch.long)
            full_embeds = torch.cat([embeds, embed(extra[None])], dim=1)
            positions = torch.cat([sequence_index, encoded.length + torch.arange(step)])
            hidden = language_model(inputs_embeds=full_embeds, position_ids=positions[None],
                                    attention_mask=torch.ones_like(positions)[None]).last_hidden_state
            ids.append(int(tiny_model.model.lm_head(hidden[:, -1]).argmax(-1)))
    assert ids == generation.answer_token_ids


def test_unpruned_answer_equals_transformers_generate(tiny_model, image, encoded):
    full = Selection(kept_positions=np.arange(encoded.packed_features.shape[0]))
    ours = generate(tiny_model, encoded, *kept_sequence(encoded, full), max_new_tokens=8)
    inputs = hf_inputs(tiny_model, image)
    with torch.no_grad():
        output = tiny_model.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    reference = output[0, inputs["input_ids"].shape[1]:].tolist()
    eos = tiny_model.processor.tokenizer.eos_token_id
    reference = reference[: reference.index(eos)] if eos in reference else reference
    assert ours.answer_token_ids == reference


def test_fastv_hook_scores_equal_eager_attention(tiny_model, image, encoded):
    layer_k = 2
    model = tiny_model.model
    inputs = hf_inputs(tiny_model, image)
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            eager = model(**inputs, output_attentions=True).attentions[layer_k - 1][0, :, -1].mean(0)
    finally:
        model.set_attn_implementation(previous)
    language_model = model.model.language_model
    captured = {}
    prompt, _ = method_prompt(encoded, "fastv", AnalysisConfig(fastv_layer=layer_k), 0.5)
    _, span, choose = prompt.fastv

    def capture(row, image_attention):
        captured["row"] = image_attention
        return choose(image_attention)

    rows = Rows(encoded.inputs_embeds, torch.arange(encoded.length)[None], torch.ones(1, encoded.length, dtype=torch.bool))
    out = prefill(language_model, rows, FastVPlan(layer_k, (span,), (encoded.length - 1,), capture))
    torch.testing.assert_close(captured["row"], eager[encoded.image_start:encoded.image_end], rtol=1e-4, atol=1e-6)
    # A direct call on the layer's input gives the same row over the whole prompt.
    with torch.no_grad():
        hidden = encoded.inputs_embeds
        positions = torch.arange(encoded.length)[None]
        rope = language_model.rotary_emb(hidden, position_ids=positions)
        for layer in language_model.layers[: layer_k - 1]:
            hidden = layer(hidden, position_embeddings=rope, position_ids=positions)
        layer = language_model.layers[layer_k - 1]
        row = query_attention(layer.self_attn, layer.input_layernorm(hidden), rope, positions, rows.real,
                              torch.tensor([encoded.length - 1]), None)[0]
    torch.testing.assert_close(row, eager, rtol=1e-4, atol=1e-6)
    # Layers before K cache every token, layers from K only the kept ones.
    kept = len(out.seen[0])
    assert [out.state.cache.layers[i].keys.shape[2] for i in range(len(language_model.layers))] == \
        [encoded.length] * layer_k + [kept] * (len(language_model.layers) - layer_k)


def test_analysis_keeps_equal_budgets_and_is_deterministic(tiny_model, image):
    config = AnalysisConfig(keep_ratio=0.25, max_new_tokens=4)
    first = analyze(tiny_model, image, QUESTION, config)
    second = analyze(tiny_model, image, QUESTION, config)
    counts = {name: result.tokens_after for name, result in first.results.items()}
    assert len(set(counts.values())) == 1 and counts["gprune"] == 144 + 432 + 36
    for name, result in first.results.items():
        kept = result.kept_positions
        assert np.all(np.diff(kept) > 0) and result.flops_ratio < 1
        np.testing.assert_array_equal(kept, second.results[name].kept_positions)
        assert result.answer_token_ids == second.results[name].answer_token_ids
        newlines = first.layout.positions(2)
        assert set(newlines.tolist()) <= set(kept.tolist())
    assert first.results["fastv"].flops > first.results["gprune"].flops
    assert first.results["gprune"].selection.scores.shape == (6, 2340)
    assert first.summary()["results"]["tome"]["tokens_after"] == counts["tome"]


def test_answer_stability_is_the_reference_at_ratio_one(tiny_model, encoded):
    full = Selection(kept_positions=np.arange(encoded.packed_features.shape[0]))
    generation = generate(tiny_model, encoded, *kept_sequence(encoded, full), max_new_tokens=5)
    curves = answer_stability(tiny_model, encoded, generation.answer_token_ids, [1.0, 0.25], AnalysisConfig())
    reference = curves["unpruned"][0]
    assert reference < 0
    for method in METHODS:
        assert curves[method].shape == (2,)
        assert curves[method][0] == pytest.approx(reference, abs=1e-4)
    # Teacher forcing equals the sum of greedy step log-probabilities computed one step at a time.
    language_model = tiny_model.model.model.language_model
    sequence_index, embeds = kept_sequence(encoded, full)
    total, ids = 0.0, generation.answer_token_ids
    with torch.no_grad():
        for step, token in enumerate(ids):
            extra = tiny_model.model.get_input_embeddings()(torch.tensor(ids[:step], dtype=torch.long)[None])
            positions = torch.cat([sequence_index, encoded.length + torch.arange(step)])
            hidden = language_model(inputs_embeds=torch.cat([embeds, extra], 1), position_ids=positions[None],
                                    attention_mask=torch.ones_like(positions)[None]).last_hidden_state
            total += float(tiny_model.model.lm_head(hidden[:, -1]).log_softmax(-1)[0, token])
    prompt = Prompt(sequence_index, embeds, encoded.length)
    assert answer_log_probabilities(tiny_model, [prompt], ids)[0] == pytest.approx(total, abs=1e-4)


@pytest.mark.parametrize("change, message", [
    (dict(methods=("gprune", "bogus")), "methods"),
    (dict(methods=()), "methods"),
    (dict(keep_ratio=0.0), "keep_ratio"),
    (dict(iterations=-2), "iterations"),
    (dict(threshold=2.0), "threshold"),
    (dict(temperature=0.0), "temperature"),
    (dict(fastv_layer=0), "fastv_layer"),
    (dict(fastv_layer=99), "fastv_layer"),
    (dict(max_new_tokens=0), "max_new_tokens"),
])
def test_bad_analysis_config(tiny_model, image, change, message):
    with pytest.raises(ValueError, match=message):
        analyze(tiny_model, image, QUESTION, AnalysisConfig(**change))


@pytest.mark.parametrize("question", ["", "   ", None])
def test_empty_question(tiny_model, image, question):
    with pytest.raises(ValueError, match="question"):
        analyze(tiny_model, image, question, AnalysisConfig(methods=("random",)))


def test_too_thin_image_is_refused_with_a_reason(tiny_model):
    with pytest.raises(ValueError, match="too thin"):
        encode(tiny_model, Image.new("RGB", (1000, 2)), QUESTION)


def test_generation_stops_at_the_tokenizers_eos_and_the_generation_configs(tiny_model, encoded):
    """Checkpoints differ in where they declare EOS (generation_config.json or the tokenizer): stop at either."""
    full = Selection(kept_positions=np.arange(encoded.packed_features.shape[0]))
    sequence_index, embeds = kept_sequence(encoded, full)
    answer = generate(tiny_model, encoded, sequence_index, embeds, max_new_tokens=6).answer_token_ids
    stop = next(token for token in answer[1:] if token != answer[0])  # a token that first appears after step 0
    expected = answer[: answer.index(stop)]
    generation_config, tokenizer = tiny_model.model.generation_config, tiny_model.processor.tokenizer
    saved = generation_config.eos_token_id, tokenizer.eos_token
    unused = next(token for token in range(4, 1000) if token not in answer)
    try:
        generation_config.eos_token_id = unused  # the generation config names another EOS than the tokenizer
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(stop)
        assert generate(tiny_model, encoded, sequence_index, embeds, max_new_tokens=6).answer_token_ids == expected
        generation_config.eos_token_id, tokenizer.eos_token = [unused, stop], saved[1]
        assert generate(tiny_model, encoded, sequence_index, embeds, max_new_tokens=6).answer_token_ids == expected
    finally:
        generation_config.eos_token_id, tokenizer.eos_token = saved

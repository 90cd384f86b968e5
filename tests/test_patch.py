"""`gprune.patch`: every method inside stock transformers `generate`, batched, against our own pipeline."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from conftest import synthetic_image
from gprune import METHODS, AnalysisConfig, analyze, patch, selections, unpatch
from gprune.analysis import method_prompt
from gprune.packed import token_budget
from gprune.patch import is_patched, kept_mask

QUESTION = "What is in the image?"
SETTINGS = dict(keep_ratio=0.25, iterations=3, fastv_layer=1)
NEW_TOKENS = 8
SIZES = [(640, 480), (300, 500), (900, 400)]  # three grid shapes, so three prompt lengths


@pytest.fixture(scope="module")
def images():
    return [synthetic_image(width, height, seed) for seed, (width, height) in enumerate(SIZES)]


@contextlib.contextmanager
def patched(tiny_model, method, **settings):
    patch(tiny_model.model, method=method, **{**SETTINGS, **settings})
    try:
        yield tiny_model.model
    finally:
        unpatch(tiny_model.model)


def inputs_for(tiny_model, images, padding_side="left"):
    tokenizer = tiny_model.processor.tokenizer
    previous, tokenizer.padding_side = tokenizer.padding_side, padding_side
    try:
        return tiny_model.processor(images=images, text=[tiny_model.prompt(QUESTION)] * len(images), padding=True,
                                    return_tensors="pt")
    finally:
        tokenizer.padding_side = previous


def new_tokens(tiny_model, sequences, prompt_length) -> list[list[int]]:
    """Each row's generated ids up to (without) its first EOS, as our pipeline reports answers."""
    eos = tiny_model.processor.tokenizer.eos_token_id
    rows = []
    for row in sequences[:, prompt_length:].tolist():
        rows.append(row[: row.index(eos)] if eos in row else row)
    return rows


def greedy(model, inputs, **kwargs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, **kwargs)


@pytest.mark.parametrize("method", METHODS)
def test_batch_one_generate_equals_analyze(tiny_model, images, method):
    config = AnalysisConfig(methods=(method,), max_new_tokens=NEW_TOKENS, **SETTINGS)
    for image in images[:2]:
        ours = analyze(tiny_model, image, QUESTION, config).results[method]
        inputs = inputs_for(tiny_model, [image])
        with patched(tiny_model, method) as model:
            tokens = new_tokens(tiny_model, greedy(model, inputs), inputs["input_ids"].shape[1])[0]
            kept = selections(model)[0]
        assert tokens == ours.answer_token_ids
        np.testing.assert_array_equal(kept.kept_positions, ours.selection.kept_positions)
        if method == "tome":
            np.testing.assert_array_equal(kept.merged_features, ours.selection.merged_features)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("method", METHODS)
def test_batch_of_three_sizes_gives_each_row_its_batch_one_answer(tiny_model, images, method, padding_side):
    singles = []
    with patched(tiny_model, method) as model:
        for image in images:
            inputs = inputs_for(tiny_model, [image])
            out = greedy(model, inputs, output_scores=True, return_dict_in_generate=True)
            singles.append((new_tokens(tiny_model, out.sequences, inputs["input_ids"].shape[1])[0], out.scores,
                            selections(model)[0].kept_positions))
        inputs = inputs_for(tiny_model, images, padding_side)
        batch = new_tokens(tiny_model, greedy(model, inputs), inputs["input_ids"].shape[1])
        kept = [selection.kept_positions for selection in selections(model)]
    for row, ((tokens, scores, single_kept), batch_tokens) in enumerate(zip(singles, batch)):
        np.testing.assert_array_equal(kept[row], single_kept)
        grid_rows, grid_cols = grid_of(tiny_model, images[row])
        assert len(single_kept) == sum(token_budget(grid_rows, grid_cols, 0.25)) + grid_rows
        if batch_tokens != tokens:  # allowed only where batch 1 was a near-tie between its top two tokens
            step = next(t for t, (a, b) in enumerate(zip(batch_tokens, tokens)) if a != b)
            top_two = scores[step][0].topk(2).values
            assert float(top_two[0] - top_two[1]) < 1e-4, f"row {row} differs at step {step} without a near-tie"


def grid_of(tiny_model, image) -> tuple[int, int]:
    from gprune.pipeline import encode

    layout = encode(tiny_model, image, QUESTION).layout
    return layout.rows, layout.cols


def test_unpatch_restores_the_stock_model_bit_for_bit(tiny_model, images):
    inputs = inputs_for(tiny_model, images[:2])
    model = tiny_model.model
    with torch.no_grad():
        before = model(**inputs).logits
        with patched(tiny_model, "gprune"):
            assert is_patched(model)
            pruned = model(**inputs).logits
            greedy(model, inputs)
        after = model(**inputs).logits
    assert pruned.shape == before.shape and (pruned == 0).all(dim=-1).any()  # pruned columns: zeros
    assert not is_patched(model) and "forward" not in vars(model.model)
    assert "forward" not in vars(model) and "generate" not in vars(model)
    assert torch.equal(before, after)


@pytest.mark.parametrize("method", METHODS)
def test_keep_ratio_one_equals_the_unpatched_model(tiny_model, images, method):
    inputs = inputs_for(tiny_model, images[:2])
    stock = greedy(tiny_model.model, inputs, output_scores=True, return_dict_in_generate=True)
    with patched(tiny_model, method, keep_ratio=1.0) as model:
        ours = greedy(model, inputs, output_scores=True, return_dict_in_generate=True)
        assert [len(s.kept_positions) for s in selections(model)] == [576 + r * (c + 1) for r, c in
                                                                       (grid_of(tiny_model, image) for image in images[:2])]
    assert torch.equal(ours.sequences, stock.sequences)
    for step_ours, step_stock in zip(ours.scores, stock.scores):
        assert torch.equal(step_ours, step_stock)


def test_scores_and_dict_output(tiny_model, images):
    inputs = inputs_for(tiny_model, images[:2])
    with patched(tiny_model, "tome") as model:
        out = greedy(model, inputs, output_scores=True, output_logits=True, return_dict_in_generate=True)
    generated = out.sequences[:, inputs["input_ids"].shape[1]:]
    assert len(out.scores) == len(out.logits) == generated.shape[1]
    for step, scores in enumerate(out.scores):
        assert torch.equal(scores.argmax(-1), generated[:, step])


def test_sampling_is_the_stock_sampling_of_the_pruned_logits(tiny_model, images):
    inputs = inputs_for(tiny_model, images[:2])
    sample = dict(do_sample=True, top_k=20, temperature=1.5, max_new_tokens=6)
    torch.manual_seed(7)
    with torch.no_grad():
        stock = tiny_model.model.generate(**inputs, **sample)
    with patched(tiny_model, "gprune", keep_ratio=1.0) as model:
        torch.manual_seed(7)
        with torch.no_grad():
            ours = model.generate(**inputs, **sample)
    assert torch.equal(ours, stock)


def test_beam_search_equals_stock_beam_search_on_the_pruned_prompt(tiny_model, images):
    """Beam search reorders the cache; each beam's masks and positions are its prompt's, so it stays right."""
    config = AnalysisConfig(**SETTINGS)
    from gprune.pipeline import encode

    encoded = encode(tiny_model, images[0], QUESTION)
    prompt, _ = method_prompt(encoded, "l2norm", config, 0.25)
    beams = dict(num_beams=3, max_new_tokens=6, do_sample=False)
    with torch.no_grad():
        reference = tiny_model.model.generate(inputs_embeds=prompt.inputs_embeds, position_ids=prompt.sequence_index[None],
                                              attention_mask=torch.ones_like(prompt.sequence_index)[None], **beams)
    inputs = inputs_for(tiny_model, images[:1])
    with patched(tiny_model, "l2norm") as model, torch.no_grad():
        ours = model.generate(**inputs, **beams)
    assert ours[:, inputs["input_ids"].shape[1]:].tolist() == reference.tolist()


def test_without_a_cache_pre_llm_methods_recompute_the_same_answer(tiny_model, images):
    inputs = inputs_for(tiny_model, images[:2])
    with patched(tiny_model, "gprune") as model:
        cached = greedy(model, inputs)
        uncached = greedy(model, inputs, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("call, message", [
    (lambda m, i: m.generate(**i, max_new_tokens=2, use_cache=False), "FastV prunes once, at prefill"),
    (lambda m, i: m.generate(**i, max_new_tokens=2, prompt_lookup_num_tokens=3), "prompt-lookup decoding is not supported"),
    (lambda m, i: m.generate(**i, max_new_tokens=2, cache_implementation="static"), "cache_implementation='static'"),
    (lambda m, i: m(**i, output_attentions=True), "does not return attentions"),
    (lambda m, i: m.generate(**i, max_new_tokens=2, prefill_chunk_size=64), "chunked prefill is not supported"),
])
def test_unsupported_generation_modes_are_refused(tiny_model, images, call, message):
    inputs = inputs_for(tiny_model, images[:1])
    with patched(tiny_model, "fastv") as model, torch.no_grad(), pytest.raises(ValueError, match=message):
        call(model, inputs)


@pytest.mark.parametrize("settings, message", [
    (dict(method="bogus"), "method must be one of gprune, fastv, tome, l2norm, random"),
    (dict(keep_ratio=0.0), r"keep_ratio must be in \(0, 1\]"),
    (dict(iterations=-1), "iterations must be from 0 to 100"),
    (dict(threshold=2.0), r"threshold must be a cosine similarity in \[-1, 1\]"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(fastv_layer=4), r"fastv_layer \(K\) must be a whole number from 1 to 3"),
])
def test_bad_settings_get_the_librarys_messages(tiny_model, settings, message):
    with pytest.raises(ValueError, match=message):
        patch(tiny_model.model, **{"method": "gprune", **settings})
    assert not is_patched(tiny_model.model)


def test_wrong_model_and_unpatched_model_are_refused(tiny_model):
    text_only = LlamaForCausalLM(tiny_model.model.config.text_config)
    with pytest.raises(ValueError, match="patch needs a LlavaNextForConditionalGeneration, got LlamaForCausalLM"):
        patch(text_only)
    with pytest.raises(ValueError, match="not patched"):
        unpatch(tiny_model.model)
    with pytest.raises(ValueError, match="not patched"):
        selections(tiny_model.model)


def test_two_images_in_one_prompt_are_refused(tiny_model, images):
    text = f"[INST] <image>\n<image>\n{QUESTION} [/INST]"
    inputs = tiny_model.processor(images=images[:2], text=[text], return_tensors="pt")
    with patched(tiny_model, "gprune") as model, torch.no_grad(), pytest.raises(ValueError, match="exactly one image"):
        model.generate(**inputs, max_new_tokens=2)


def test_patching_again_replaces_the_settings(tiny_model, images):
    inputs = inputs_for(tiny_model, images[:1])
    with patched(tiny_model, "gprune", keep_ratio=0.25) as model:
        greedy(model, inputs)
        first = len(selections(model)[0].kept_positions)
        patch(model, method="random", keep_ratio=0.5)
        greedy(model, inputs)
        second = selections(model)[0]
    assert (first, len(second.kept_positions)) == (144 + 432 + 36, 288 + 864 + 36)


@pytest.mark.parametrize("family", ["mistral", "vicuna", "llama3"])
def test_look_alike_checkpoints_batch_one_equals_analyze_and_batches_equal_batch_one(lookalike_dirs, images, family):
    """The real families' text models (look-alikes in the hub's layout): same contract as on the tiny model."""
    from gprune import load_model
    from gprune.pipeline import eos_ids

    loaded = load_model(str(lookalike_dirs[family]), device="cpu")
    stop = eos_ids(loaded)

    def until_eos(row):
        return next((row[:i] for i, token in enumerate(row) if token in stop), row)

    pair = images[:2]
    inputs = loaded.processor(images=pair, text=[loaded.prompt(QUESTION)] * 2, padding=True, return_tensors="pt")
    for method in ("gprune", "fastv", "tome"):
        config = AnalysisConfig(methods=(method,), max_new_tokens=6, **SETTINGS)
        ours = [analyze(loaded, image, QUESTION, config).results[method].answer_token_ids for image in pair]
        patch(loaded.model, method=method, **SETTINGS)
        try:
            with torch.no_grad():
                singles = []
                for image in pair:
                    single = loaded.processor(images=image, text=loaded.prompt(QUESTION), return_tensors="pt")
                    out = loaded.model.generate(**single, max_new_tokens=6, do_sample=False)
                    singles.append(until_eos(out[0, single["input_ids"].shape[1]:].tolist()))
                batch = loaded.model.generate(**inputs, max_new_tokens=6, do_sample=False)
        finally:
            unpatch(loaded.model)
        assert singles == ours, method
        assert [until_eos(row) for row in batch[:, inputs["input_ids"].shape[1]:].tolist()] == singles, method


def test_decoding_state_goes_with_the_cache_and_unpatch_restores_the_instance(tiny_model, images):
    """Two generate calls never share decoding state (it lives on each call's cache), and unpatch gives back
    what the instance had before patch (e.g. another library's forward hook), not just the class's methods."""
    model = tiny_model.model
    hooked = []
    model.model.forward = lambda *args, **kwargs: hooked.append(1) or type(model.model).forward(model.model, *args, **kwargs)
    own_forward = vars(model.model)["forward"]
    try:
        inputs = inputs_for(tiny_model, images[:1])
        patch(model, method="gprune", **SETTINGS)
        patch(model, method="l2norm", **SETTINGS)  # patching again keeps the original to restore
        with torch.no_grad():
            first = model(**inputs, use_cache=True).past_key_values
            second = model(**inputs, use_cache=True).past_key_values
        assert first.decode_state is not second.decode_state and first.decode_state.cache is first
        assert not hasattr(getattr(model.model, "_gprune_patch"), "decode")
        unpatch(model)
        assert vars(model.model)["forward"] is own_forward and not {"forward", "generate"} & set(vars(model))
        with torch.no_grad():
            model(**inputs)
        assert hooked  # the restored hook runs again
    finally:
        vars(model.model).pop("forward", None)



def image_span(tiny_model, input_ids: torch.Tensor) -> tuple[int, int]:
    placeholders = (input_ids == tiny_model.model.config.image_token_id).nonzero().flatten()
    return int(placeholders[0]), int(placeholders[-1]) + 1


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("method", ["gprune", "fastv", "tome"])  # the three ways of pruning: before, inside, merged
def test_forward_returns_logits_in_the_callers_layout(tiny_model, images, method, padding_side):
    """Column j of the logits belongs to input_ids[:, j] for either padding side: at keep 1 they are the stock
    model's; pruned, each row's last token (logits[i, mask.sum() - 1] with right padding) is its batch-1 one."""
    inputs = inputs_for(tiny_model, images[:2], padding_side)
    real = inputs["attention_mask"].bool()
    last = inputs["attention_mask"].sum(dim=1) - 1 if padding_side == "right" else torch.full((2,), real.shape[1] - 1)
    assert padding_side == "left" or int(last.min()) < real.shape[1] - 1  # the rows differ in length
    with torch.no_grad():
        stock = tiny_model.model(**inputs).logits
        with patched(tiny_model, method, keep_ratio=1.0) as model:
            ours = model(**inputs).logits
            assert torch.equal(kept_mask(model), real)
        torch.testing.assert_close(ours[real], stock[real], rtol=1e-4, atol=1e-5)
        with patched(tiny_model, method) as model:
            pruned = model(**inputs).logits
            kept = kept_mask(model)
            kept_counts = [len(s.kept_positions) for s in selections(model)]
            singles = [model(**inputs_for(tiny_model, [image])).logits[0, -1] for image in images[:2]]
    assert pruned.shape == stock.shape and (pruned[~kept] == 0).all()
    assert kept.sum(dim=1).tolist() == [int(n) - (576 + r * (c + 1)) + k for n, (r, c), k in
                                        zip(real.sum(dim=1), (grid_of(tiny_model, i) for i in images[:2]), kept_counts)]
    for row in range(2):
        start, end = image_span(tiny_model, inputs["input_ids"][row])
        assert kept[row, end:][real[row, end:]].all() and kept[row, :start][real[row, :start]].all()  # text is kept
        torch.testing.assert_close(pruned[row, last[row]], singles[row], rtol=1e-4, atol=1e-5)


def text_labels(tiny_model, inputs) -> torch.Tensor:
    """input_ids as labels, -100 on padding, the image and what precedes it: the text after the image counts
    (its first token follows the image's last token, a newline, which every method keeps)."""
    labels = inputs["input_ids"].clone()
    labels[~inputs["attention_mask"].bool()] = -100
    for row in range(labels.shape[0]):
        _, end = image_span(tiny_model, inputs["input_ids"][row])
        labels[row, :end] = -100
    return labels


def test_labels_are_scored_on_the_kept_tokens(tiny_model, images):
    inputs = inputs_for(tiny_model, images[:2], "right")
    labels = text_labels(tiny_model, inputs)
    with torch.no_grad():
        stock = tiny_model.model(**inputs, labels=labels).loss
        with patched(tiny_model, "gprune", keep_ratio=1.0) as model:
            torch.testing.assert_close(model(**inputs, labels=labels).loss, stock, rtol=1e-5, atol=1e-6)
        with patched(tiny_model, "gprune") as model:
            out = model(**inputs, labels=labels)
            counted = labels[:, 1:] != -100
            by_hand = torch.nn.functional.cross_entropy(out.logits[:, :-1][counted], labels[:, 1:][counted])
            torch.testing.assert_close(out.loss, by_hand)
            assert not torch.isclose(out.loss, stock)  # pruning changed the prediction
            with pytest.raises(ValueError, match="the token before it was pruned"):
                model(**inputs, labels=inputs["input_ids"].masked_fill(~inputs["attention_mask"].bool(), -100))
            with pytest.raises(ValueError, match="labels must have the shape of input_ids"):
                model(**inputs, labels=labels[:, 1:])


def test_the_patch_is_inference_only(tiny_model, images):
    inputs = inputs_for(tiny_model, images[:1])
    with patched(tiny_model, "gprune") as model:
        with pytest.raises(ValueError, match="inference-only.*torch.no_grad"):
            model(**inputs)
        frozen = [p for p in model.parameters() if p.requires_grad]
        try:
            for parameter in frozen:
                parameter.requires_grad_(False)
            assert not model(**inputs).logits.requires_grad  # grad mode, but nothing could get a gradient
            with pytest.raises(ValueError, match="inference-only"):
                model(**{**inputs, "pixel_values": inputs["pixel_values"].clone().requires_grad_()})
        finally:
            for parameter in frozen:
                parameter.requires_grad_(True)
        with torch.inference_mode():
            assert model(**inputs).logits.shape == inputs["input_ids"].shape + (model.config.text_config.vocab_size,)


@pytest.mark.parametrize("compile_model", [lambda m: torch.compile(m, backend="eager"),
                                           lambda m: m.compile(backend="eager") or m])
def test_torch_compile_of_a_patched_model_is_refused(tiny_model, images, compile_model):
    inputs = inputs_for(tiny_model, images[:1])
    try:
        with patched(tiny_model, "l2norm") as model, torch.no_grad():
            compiled = compile_model(model)
            with pytest.raises(ValueError, match="torch.compile cannot compile a patched model"):
                compiled(**inputs)
    finally:
        vars(tiny_model.model).pop("_compiled_call_impl", None)
        torch._dynamo.reset()

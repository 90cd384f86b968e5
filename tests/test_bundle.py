"""Precomputed bundles: written from a live analysis, read back into the same analysis (minus features)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import synthetic_image
from gprune import tome_select
from gprune.bundle import (BUNDLE_VERSION, BundleKey, image_digest, model_family, precompute_views, read_bundle,
                           read_bundles, write_bundle)
from gprune.stats import pair_similarities

ROOT = Path(__file__).resolve().parent.parent
RATIOS = (0.1, 0.25, 0.5)


@pytest.fixture(scope="module")
def image_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    synthetic_image().save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def written(tiny_analysis, image_bytes, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundles")
    curves = {method: [-3.0, -4.0] for method in tiny_analysis.results}  # the sweep has a curve per stored run
    stability = {"keep_ratios": [1.0, 0.5], "curves": {**curves, "unpruned": [-3.0, -3.0], "gprune": [-3.0, -4.5]}}
    path = write_bundle(tiny_analysis, image_bytes, folder, "example", created="2026-11-30", code_version="test",
                        layers=4, stability=stability, precomputed=precompute_views(tiny_analysis, RATIOS))
    return path


def test_a_bundle_restores_the_analysis_without_its_features(tiny_analysis, written):
    bundle = read_bundle(written)
    restored = bundle.analysis(tiny_analysis.image)
    assert restored.features is None and restored.origin == bundle.label
    assert bundle.label == "precomputed on random-weight toy model tiny at 2026-11-30"
    assert restored.summary() == {**tiny_analysis.summary(), "origin": bundle.label}
    for name in ("kind", "cell", "box"):
        np.testing.assert_array_equal(getattr(restored.layout, name), getattr(tiny_analysis.layout, name))
    for method, original in {"unpruned": tiny_analysis.reference, **tiny_analysis.results}.items():
        ours = restored.reference if method == "unpruned" else restored.results[method]
        assert ours.answer_token_ids == original.answer_token_ids and ours.flops == original.flops
        for field in ("kept_positions", "scores", "degree", "neighbors", "neighbor_weights"):
            expected = getattr(original.selection, field)
            if expected is None:
                assert getattr(ours.selection, field) is None
            else:
                np.testing.assert_array_equal(getattr(ours.selection, field), expected)
        if original.selection.groups is not None:
            assert [g.tolist() for g in ours.selection.groups] == [g.tolist() for g in original.selection.groups]
    assert bundle.meta["stability"]["curves"]["gprune"] == [-3.0, -4.5]


def test_stored_views_are_what_the_features_give(tiny_analysis, written):
    restored = read_bundle(written).analysis(tiny_analysis.image)
    layout = tiny_analysis.layout
    for view, kind in (("base", 0), ("grid", 1)):
        np.testing.assert_array_equal(restored.precomputed.similarity[view],
                                      pair_similarities(tiny_analysis.features, layout.positions(kind)))
    assert sorted(restored.precomputed.tome) == list(RATIOS)
    for ratio in RATIOS:
        live = tome_select(torch.from_numpy(tiny_analysis.features), layout.rows, layout.cols, ratio,
                           base_tokens=layout.base_tokens)
        stored = restored.precomputed.tome[ratio]
        np.testing.assert_array_equal(stored.kept_positions, live.kept_positions)
        assert [g.tolist() for g in stored.groups] == [g.tolist() for g in live.groups]


def test_the_key_is_image_bytes_question_and_model_family(tiny_analysis, written, image_bytes):
    bundles, problems = read_bundles(written.parent)
    assert problems == []
    assert list(bundles) == [BundleKey(image_digest(image_bytes), tiny_analysis.question, "tiny")]
    assert model_family("llava-hf/llava-v1.6-mistral-7b-hf") == model_family("/models/llava-v1.6-mistral-7b-hf/") \
        == "llava-v1.6-mistral-7b-hf"


def test_another_version_or_a_broken_bundle_is_refused_with_a_message(written, tmp_path):
    meta = json.loads(written.read_text())
    cases = {
        "old": {**meta, "bundle_version": BUNDLE_VERSION - 1},
        "future": {**meta, "bundle_version": BUNDLE_VERSION + 1},
    }
    for name, content in cases.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
        (tmp_path / f"{name}.npz").write_bytes(written.with_suffix(".npz").read_bytes())
    (tmp_path / "no_arrays.json").write_text(json.dumps(meta))
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "cut.json").write_text(json.dumps(meta))
    (tmp_path / "cut.npz").write_bytes(written.with_suffix(".npz").read_bytes()[:1000])
    bundles, problems = read_bundles(tmp_path)
    assert bundles == {}
    joined = "\n".join(problems)
    assert f"old.json has format version {BUNDLE_VERSION - 1}, this code reads version {BUNDLE_VERSION}" in joined
    assert "regenerate it with `python -m gprune precompute`" in joined
    assert f"future.json has format version {BUNDLE_VERSION + 1}" in joined
    assert "no_arrays.json: its arrays (no_arrays.npz) cannot be read" in joined
    assert "garbage.json cannot be read" in joined and "cut.json: its arrays" in joined


def test_a_bundle_for_another_image_size_is_refused(tiny_analysis, written):
    with pytest.raises(ValueError, match="computed for a 640×480 image, not 320×240"):
        read_bundle(written).analysis(synthetic_image(320, 240))


def test_precompute_command_writes_a_bundle_and_a_report_per_example(tmp_path):
    examples = tmp_path / "examples.json"
    synthetic_image(200, 150).save(tmp_path / "small.png")
    synthetic_image(1000, 4).save(tmp_path / "ribbon.png")  # too thin for the model's grid: an error, not the end
    examples.write_text(json.dumps([{"file": "ribbon.png", "question": "What?"},
                                    {"file": "small.png", "question": " What is in the image? "}]))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "gprune", "precompute", "--model", "tiny", "--examples", str(examples),
                           "--out", str(out), "--timing-rounds", "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 1 and "error: ribbon.png: a 1000×4 image is too thin" in done.stderr, done.stderr[-2000:]
    assert not (out / "ribbon.json").exists()
    bundle = read_bundle(out / "small.json")
    assert bundle.key.question == "What is in the image?"  # stripped, as the app reads a question
    assert bundle.meta["config"]["timing_rounds"] == 1 and bundle.meta["model"]["name"] == "tiny"
    assert set(bundle.meta["results"]) == {"unpruned", "gprune", "fastv", "tome", "l2norm", "random"}
    assert len(bundle.arrays["tome_by_ratio/ratios"]) == 100 and len(bundle.meta["stability"]["keep_ratios"]) == 6
    report = (out / "report.md").read_text()
    assert "## small: “What is in the image?”" in report and report.count("| G-Prune |") == 1
    bad = subprocess.run([sys.executable, "-m", "gprune", "precompute", "--model", "tiny", "--examples",
                          str(tmp_path / "missing.json")], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")

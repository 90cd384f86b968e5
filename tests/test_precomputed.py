"""Precomputed examples in the app: the shipped bundles are current, a bundle shows what a live Run shows, and
the server serves them (also with no model at all)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app_views as views
from app_bundles import Bundles
from conftest import running_app
from pictures import assert_looks_the_same, assert_same_kept_up_to_ties, assert_same_picture_or_text, assert_same_text
from gprune import AnalysisConfig, analyze
from gprune.bundle import BUNDLE_VERSION, image_digest, read_bundle, read_bundles
from gprune.images import fit_image, load_image

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
BUNDLES = ASSETS / "precomputed"
EXAMPLES = json.loads((ASSETS / "examples.json").read_text())
REGENERATE = "regenerate them: python -m gprune precompute --model tiny --examples assets/examples.json --out assets/precomputed"
BUNDLES_ONLY_RSS_MB = 800  # a Python process with torch, transformers and Gradio imported, and no model


def example_image(entry) -> Image.Image:
    return fit_image(load_image((ASSETS / entry["file"]).read_bytes()))


@pytest.fixture(scope="module")
def live_and_stored(tiny_model):
    """chelsea.png (the smallest example) run live on the tiny model and restored from its shipped bundle."""
    entry = next(e for e in EXAMPLES if e["file"] == "chelsea.png")
    image = example_image(entry)
    live = analyze(tiny_model, image, entry["question"], AnalysisConfig())
    stored = read_bundle(BUNDLES / "chelsea.json").analysis(image)
    return live, stored


def without_timings(analysis):
    """A copy whose results carry no timings (a live Run measures its own; a bundle has the maintainer's)."""
    strip = lambda result: dataclasses.replace(result, selection_timing=None, prefill_timing=None)  # noqa: E731
    copy = dataclasses.replace(analysis, reference=strip(analysis.reference), origin=None,
                               results={m: strip(r) for m, r in analysis.results.items()})
    copy.config = dataclasses.replace(copy.config, timing_rounds=0)
    return copy


def test_shipped_bundles_cover_every_example_and_are_current(tiny_model):
    bundles, problems = read_bundles(BUNDLES)
    assert problems == [], f"unreadable bundles ({problems}); {REGENERATE}"
    for entry in EXAMPLES:
        bundle = read_bundle(BUNDLES / f"{Path(entry['file']).stem}.json")
        assert bundle.meta["bundle_version"] == BUNDLE_VERSION
        assert bundle.key.image_sha256 == image_digest((ASSETS / entry["file"]).read_bytes())
        assert (bundle.key.question, bundle.key.model_family) == (entry["question"], "tiny")
        assert bundle.meta["config"]["timing_rounds"] > 0  # the shipped examples show measured timings
        image = example_image(entry)
        live = analyze(tiny_model, image, entry["question"], AnalysisConfig())
        stored = bundle.analysis(image)
        for method, result in {"unpruned": live.reference, **live.results}.items():
            kept = (stored.reference if method == "unpruned" else stored.results[method])
            assert kept.answer_token_ids == result.answer_token_ids, f"{entry['file']} {method}: stale bundle; {REGENERATE}"
            assert_same_kept_up_to_ties(kept.selection.kept_positions, result.selection.kept_positions,
                                        None if result.selection.scores is None else result.selection.scores[-1],
                                        f"{entry['file']} {method}: stale bundle? {REGENERATE}")


def final_scores(analysis, method):
    scores = analysis.results[method].selection.scores
    return None if scores is None else scores[-1]


def test_a_bundle_shows_what_the_live_run_shows(live_and_stored):
    """What a person sees: the same kept tokens (up to swaps of tied scores), the same texts and pictures that look
    the same. The bundle was computed on another CPU, so its floats may differ from the live run's in the last bits."""
    live, stored = live_and_stored
    assert stored.features is None and live.features is not None
    for method in live.results:
        assert_same_kept_up_to_ties(stored.results[method].kept_positions, live.results[method].kept_positions,
                                    final_scores(live, method), method)
    sessions = [views.new_session(without_timings(a), image_name="chelsea.png") for a in (live, stored)]
    for view in views.VIEWS:
        for t in range(live.config.iterations + 1):
            for a, b in zip(*(views.iteration_pictures(s, view, t) for s in sessions)):
                assert_same_picture_or_text(a, b, f"{view} iteration {t}")
        for (a, caption_a), (b, caption_b) in zip(*(views.method_pictures(s, view) for s in sessions)):
            assert_looks_the_same(a, b, f"{view} {caption_a}")
            assert caption_a == caption_b
        pictures = [np.asarray(views.similarity_picture(s.analysis, view)) for s in sessions]
        assert_looks_the_same(*pictures, f"{view} similarity")
        pictures = [np.asarray(views.score_picture(s, view, 3)) for s in sessions]
        assert_looks_the_same(*pictures, f"{view} scores")
        for a, b in zip(*(views.difference_picture(s, "gprune", "tome", view) for s in sessions)):
            assert_same_picture_or_text(a, b, f"{view} difference")
        inspected = [views.inspect_token(s, view, 200.0, 150.0) for s in sessions]
        assert_same_text(inspected[0].markdown, inspected[1].markdown, f"{view} inspect")
        assert_looks_the_same(inspected[0].highlight, inspected[1].highlight, f"{view} inspect")
    assert_same_text(views.comparison_html(sessions[0].analysis), views.comparison_html(sessions[1].analysis), "answers")
    for session in sessions:  # the keep-ratio redraw, ToMe included (live: merged again; stored: looked up)
        views.set_display(session, keep_ratio=0.25)
    for method in live.results:
        kept = [views.selection_at(s, method).kept_positions for s in sessions]
        assert_same_kept_up_to_ties(*kept, final_scores(live, method), f"{method} at 0.25")
    for (a, caption), (b, _) in zip(*(views.method_pictures(s, "grid") for s in sessions)):
        assert_looks_the_same(a, b, f"{caption} at 0.25")


def test_stale_foreign_and_broken_bundles_are_left_out_with_a_message(tmp_path):
    for name in ("chelsea", "coffee", "rocket"):
        for suffix in (".json", ".npz"):
            (tmp_path / f"{name}{suffix}").write_bytes((BUNDLES / f"{name}{suffix}").read_bytes())
    stale = json.loads((tmp_path / "coffee.json").read_text())
    (tmp_path / "coffee.json").write_text(json.dumps({**stale, "bundle_version": BUNDLE_VERSION - 1}))
    foreign = json.loads((tmp_path / "rocket.json").read_text())
    foreign["model"] = {**foreign["model"], "name": "llava-hf/llava-v1.6-vicuna-7b-hf", "family": "llava-v1.6-vicuna-7b-hf"}
    (tmp_path / "rocket.json").write_text(json.dumps(foreign))
    (tmp_path / "broken.json").write_text("{")
    log = io.StringIO()
    bundles = Bundles(tmp_path, "tiny", log=log)
    assert [key.question for key in bundles.by_key] == [next(e for e in EXAMPLES if e["file"] == "chelsea.png")["question"]]
    lines = log.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith("precomputed examples: ") for line in lines)
    joined = log.getvalue()
    assert f"coffee.json has format version {BUNDLE_VERSION - 1}" in joined and "broken.json cannot be read" in joined
    assert "rocket.json was computed on 'llava-v1.6-vicuna-7b-hf', this server runs 'tiny': ignored" in joined


def test_bundles_of_another_model_of_the_same_name_or_twice_the_same_key_are_left_out(tmp_path):
    for suffix in (".json", ".npz"):
        (tmp_path / f"chelsea{suffix}").write_bytes((BUNDLES / f"chelsea{suffix}").read_bytes())
        (tmp_path / f"chelsea-again{suffix}").write_bytes((BUNDLES / f"chelsea{suffix}").read_bytes())
    log = io.StringIO()
    assert len(Bundles(tmp_path, "tiny", layers=8, random_weights=True, log=log)) == 0
    # Files are read in name order: "chelsea-again" first, so "chelsea" is the duplicate.
    assert "chelsea-again.json was computed on a 4-layer model with random weights, not this server's: ignored" \
        in log.getvalue()
    assert "bundles chelsea-again.json and chelsea.json are for the same image, question and model; chelsea.json is " \
           "ignored" in log.getvalue()
    assert len(Bundles(tmp_path, "tiny", layers=4, random_weights=True, log=io.StringIO())) == 1
    meta = json.loads((tmp_path / "chelsea.json").read_text())
    del meta["example"]
    (tmp_path / "chelsea.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="chelsea.json has malformed metadata"):
        read_bundle(tmp_path / "chelsea.json")


def test_a_bundle_is_served_only_for_its_image_question_and_settings():
    bundles = Bundles(BUNDLES, "tiny", log=io.StringIO())
    entry = EXAMPLES[0]
    data = (ASSETS / entry["file"]).read_bytes()
    default = AnalysisConfig()
    assert bundles.find(data, entry["question"], default) is not None
    assert bundles.find(data, entry["question"], dataclasses.replace(default, timing_rounds=0)) is not None
    assert bundles.find(data, entry["question"], dataclasses.replace(default, methods=("tome", "gprune"))) is not None
    assert bundles.find(data, entry["question"] + " ", default) is None
    assert bundles.find(data + b"\0", entry["question"], default) is None  # other bytes, same picture
    for change in (dict(keep_ratio=0.25), dict(iterations=4), dict(threshold=0.4), dict(temperature=0.05),
                   dict(fastv_layer=1), dict(max_new_tokens=16), dict(system_prompt="llava")):
        assert bundles.find(data, entry["question"], dataclasses.replace(default, **change)) is None, change


def test_the_app_opens_a_matching_example_from_its_bundle(app_server, tmp_path):
    client = Client(app_server, verbose=False)
    entry = EXAMPLES[0]
    image, question = handle_file(str(ASSETS / entry["file"])), entry["question"]
    summary = client.predict(image, question, api_name="/analyze")[-1]
    assert summary["origin"] == "precomputed on random-weight toy model tiny at " + read_bundle(
        BUNDLES / f"{Path(entry['file']).stem}.json").meta["created"]
    assert summary["results"]["gprune"]["prefill_timing"] is not None  # measured when the bundle was made
    curves = client.predict(api_name="/sweep")[1]  # the stored sweep: no second model call either
    assert curves == read_bundle(BUNDLES / f"{Path(entry['file']).stem}.json").meta["stability"]
    # Changing a setting or the question falls back to a normal Run.
    assert "origin" not in client.predict(image, question, keep_ratio=0.3, api_name="/analyze")[-1]
    assert "origin" not in client.predict(image, question + " Answer briefly.", api_name="/analyze")[-1]


def test_without_a_model_every_example_is_served_and_nothing_else(tmp_path, small_png):
    probe = subprocess.run(
        [sys.executable, "-c", "import gc, torch, app; print(app.LOADED, sum(p.numel() for o in gc.get_objects() "
         "if isinstance(o, torch.nn.Module) for p in o.parameters()), len(app.BUNDLES))"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "GPRUNE_BUNDLES_ONLY": "1", "GPRUNE_MODEL": "tiny"})
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.split() == ["None", "0", str(len(EXAMPLES))]  # no model: not one weight in memory
    with running_app(tmp_path, dict(GPRUNE_BUNDLES_ONLY="1")) as app:
        client = Client(app.url, verbose=False)
        for entry in EXAMPLES:
            summary = client.predict(handle_file(str(ASSETS / entry["file"])), entry["question"], api_name="/analyze")[-1]
            assert summary["origin"].startswith("precomputed on random-weight toy model tiny"), entry["file"]
        with pytest.raises(AppError, match="This server shows precomputed examples only"):
            client.predict(handle_file(str(small_png)), "What is in the image?", api_name="/analyze")
        with pytest.raises(AppError, match="This server shows precomputed examples only"):
            client.predict(handle_file(str(ASSETS / EXAMPLES[0]["file"])), EXAMPLES[0]["question"], keep_ratio=0.3,
                           api_name="/analyze")
        rss_mb = psutil.Process(app.process.pid).memory_info().rss / 2**20
        assert rss_mb < BUNDLES_ONLY_RSS_MB, rss_mb


@pytest.fixture
def small_png(tmp_path) -> Path:
    path = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path

"""The app's ZeroGPU wiring: decorated handlers (a pass-through outside ZeroGPU), per-request durations within
a signed-out visitor's daily quota, and the Space repository `deploy/space.py` assembles."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import gradio
import pytest
import torch
from PIL import Image
from transformers import LlavaNextForConditionalGeneration

import app_inputs
import zerogpu
from conftest import synthetic_image
from deploy.space import SPACE_TORCH, ZEROGPU_PYTHON, ZEROGPU_TORCH, build_space, front_matter
from gprune import AnalysisConfig, LoadedModel
from gprune.tiny import build_config
from lookalikes import CLIP_L_336, FAMILIES, TOKENIZERS

ROOT = Path(__file__).resolve().parent.parent
SIGNED_OUT_QUOTA_S = 120  # ZeroGPU's daily quota for unauthenticated visitors (2 minutes)
DEFAULT_SWEEP_RATIOS = 6  # app_views.STABILITY_RATIOS
DEFAULT_ANSWER_TOKENS = 32  # the sweep scores the Run's answer, at most max_new_tokens long


@pytest.fixture(scope="module")
def app():
    """app.py imported in this process, with the tiny model (what `python app.py` does without CUDA)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPRUNE_MODEL", "tiny")
        import app as module
    return module


def no_progress(fraction, desc=None):
    pass


def test_duration_functions_take_the_decorated_functions_arguments(app):
    """ZeroGPU calls `duration(*args, **kwargs)` with the decorated function's own arguments."""
    for function, duration in ((app.run_model, app.run_model_seconds), (app.run_sweep, app.run_sweep_seconds)):
        assert list(inspect.signature(function).parameters) == list(inspect.signature(duration).parameters)


def test_decorated_handlers_run_outside_zerogpu(app, tmp_path):
    path = tmp_path / "picture.png"
    synthetic_image(64, 48).save(path)
    upload = app_inputs.Upload(path.read_bytes(), path.name)  # what the image input hands the handler
    request = gradio.Request(session_hash="zerogpu-test")  # the results are stored for this session
    *_, summary = app.analyze_image(upload, "What is here?", methods=["gprune", "fastv"], iterations=2,
                                    fastv_layer=1, max_new_tokens=2, progress=no_progress, request=request)
    assert summary["model"] == "tiny" and list(summary["results"]) == ["gprune", "fastv"]
    assert summary["prompt"] == {"system_prompt": "template", "system_text": None}
    _, stability = app.sweep("1, 0.5", progress=no_progress, request=request)
    assert stability["keep_ratios"] == [1.0, 0.5] and set(stability["curves"]) == {"unpruned", "gprune", "fastv"}
    # The tiny model has no LLaVA system prompt: the setting is greyed out, and an API call is refused.
    assert app.NO_LLAVA_SYSTEM and "trained without a system prompt" in app.NO_LLAVA_SYSTEM
    with pytest.raises(gradio.Error, match="trained without a system prompt"):
        app.analyze_image(upload, "What?", methods=["random"], max_new_tokens=1, system_prompt="llava",
                          progress=no_progress)


def test_tiny_calls_ask_for_little_more_than_the_fixed_overhead(app):
    seconds = app.run_model_seconds(synthetic_image(), "q", AnalysisConfig(), None)
    assert zerogpu.FIXED_SECONDS < seconds <= zerogpu.FIXED_SECONDS + 2


@pytest.fixture(scope="module")
def cost_7b():
    """Cost models of the three 7B/8B checkpoints in bf16, built on the meta device (nothing allocated)."""
    models = {}
    for key in ("mistral", "vicuna", "llama3"):
        family = FAMILIES[key]
        config = build_config(TOKENIZERS[family.tokenizer_kind](), family.real_text, CLIP_L_336)
        with torch.device("meta"):
            model = LlavaNextForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
        models[key] = zerogpu.CostModel(LoadedModel(model, None, family.hub_id, random_weights=False))
    return models


@pytest.mark.parametrize("size", [(640, 480), (672, 672)], ids=["640x480", "672x672-largest"])
def test_default_run_and_sweep_fit_a_signed_out_visitors_quota(cost_7b, size):
    image = Image.new("RGB", size)
    for key, cost in cost_7b.items():
        run = cost.analysis_seconds(image, AnalysisConfig())
        sweep = cost.sweep_seconds(image, DEFAULT_ANSWER_TOKENS, DEFAULT_SWEEP_RATIOS, AnalysisConfig())
        assert run + sweep <= SIGNED_OUT_QUOTA_S, (key, run, sweep)
        assert run < 60  # below ZeroGPU's default duration, for queue priority


def test_durations_grow_with_the_work_asked_for(cost_7b):
    cost, image = cost_7b["mistral"], Image.new("RGB", (640, 480))
    one = cost.analysis_seconds(image, AnalysisConfig(methods=("gprune",), max_new_tokens=8))
    default = cost.analysis_seconds(image, AnalysisConfig())
    longest = cost.analysis_seconds(image, AnalysisConfig(max_new_tokens=128))
    timed = cost.analysis_seconds(image, AnalysisConfig(timing_rounds=3))
    assert one < default < longest and default < timed
    assert cost.sweep_seconds(image, 32, 1, AnalysisConfig()) < cost.sweep_seconds(image, 32, 12, AnalysisConfig())


# ----------------------------------------------------------------------------------------------- the Space


def test_the_front_matter_and_requirements_are_what_zerogpu_supports():
    meta = front_matter((ROOT / "README.md").read_text())
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__
    assert meta["python_version"] in ZEROGPU_PYTHON and SPACE_TORCH in ZEROGPU_TORCH
    assert meta["app_file"] == "app.py"


def test_the_space_repository_differs_only_in_the_torch_pin_and_imports(tmp_path):
    out = build_space(tmp_path / "space")
    local = (ROOT / "requirements.txt").read_text().splitlines()
    space = (out / "requirements.txt").read_text().splitlines()
    changed = [(a, b) for a, b in zip(local, space) if a != b]
    assert len(local) == len(space) and changed == [("torch==2.13.0", f"torch=={SPACE_TORCH}")]
    pins = [line for line in space if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][^ ]*", line) for line in pins), pins
    assert not any(name.startswith("torchvision") for name in pins)
    assert not (out / "tests").exists() and (out / "gprune" / "loading.py").is_file()
    # The assembled folder alone runs the app's import (tiny model): nothing it needs was left behind.
    env = {**os.environ, "GPRUNE_MODEL": "tiny", "PYTHONPATH": "", "GRADIO_ANALYTICS_ENABLED": "False"}
    check = "import app; print(app.LOADED.name, app.run_model.__name__)"
    done = subprocess.run([sys.executable, "-c", check], cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["tiny", "run_model"]

"""Shared pytest fixtures (append new fixtures below; keep each one small)."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gprune.loading import LoadedModel, load_model

# Test vectors of the published G-Prune formulation kept beside the checkout, never in the repository.
REFERENCE_VECTORS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "vectors"
collect_ignore = [] if REFERENCE_VECTORS.is_dir() else ["test_reference_vectors.py"]


def pytest_report_header(config):
    if REFERENCE_VECTORS.is_dir():
        return f"reference vectors: {len(list(REFERENCE_VECTORS.glob('*.npz')))} files in {REFERENCE_VECTORS}"
    return (f"reference vectors: none at {REFERENCE_VECTORS} (a folder kept beside the checkout, not in the repository), "
            "so tests/test_reference_vectors.py is not collected; test_graph.py checks the same formulation against "
            "independent float64 and fp32 transcriptions of the published code on every run")


@pytest.fixture(scope="session")
def tiny_model() -> LoadedModel:
    """The offline random-weight LLaVA-NeXT on the CPU, built once per test session."""
    return load_model("tiny", device="cpu")


def synthetic_image(width: int = 640, height: int = 480, seed: int = 0):
    """A deterministic RGB test picture: a colour gradient with a few flat rectangles (no assets needed)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1).astype(np.uint8)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        pixels[y0 : y0 + height // 4, x0 : x0 + width // 4] = rng.integers(0, 256, 3)
    return Image.fromarray(pixels)


@pytest.fixture(scope="session")
def tiny_analysis(tiny_model):
    """One `Analysis` of every method on a 640×480 synthetic image with the tiny model (3 iterations, K = 1)."""
    from gprune import AnalysisConfig, analyze

    config = AnalysisConfig(keep_ratio=0.25, iterations=3, fastv_layer=1, max_new_tokens=4)
    return analyze(tiny_model, synthetic_image(), "What is in the image?", config)


class AppProcess:
    """A running `python app.py`: its URL, its `subprocess.Popen` (pid for RSS checks) and its captured output."""

    def __init__(self, url, process, log_path):
        self.url, self.process, self.log_path = url, process, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_app(folder, env=None):
    """Start `python app.py` (tiny model) on a free port in `folder` with `env` added; stop it on exit."""
    root = Path(__file__).resolve().parent.parent
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("GRADIO_SERVER_NAME", "GPRUNE_SESSION_TTL_S", "GPRUNE_MAX_SESSIONS")}
    # One address for every test client: the per-address queue cap (3 by default) is unit-tested on its own.
    full_env.update(GRADIO_SERVER_PORT=str(port), GPRUNE_MODEL="tiny", GRADIO_ANALYTICS_ENABLED="False", GPRUNE_QUEUED_RUNS_PER_CLIENT="64",
                    GRADIO_TEMP_DIR=str(folder / "gradio"), TMPDIR=str(folder), PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    log_path = folder / "server.log"
    log = open(log_path, "wb")
    process = subprocess.Popen([sys.executable, "app.py"], cwd=root, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not answer on {url}:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield AppProcess(url, process, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="session")
def app_process(tmp_path_factory):
    """`python app.py` (tiny model, default settings) shared by every API test; see `AppProcess`."""
    with running_app(tmp_path_factory.mktemp("app_server")) as app:
        yield app


@pytest.fixture(scope="session")
def app_server(app_process) -> str:
    """The URL of the shared `python app.py` (tiny model)."""
    return app_process.url


SECRET_CANARY = "hf_secret_canary_123"
SHORT_MAX_SESSIONS = 2
UPLOAD_QUOTA_MB = 3


# Names a local attacker could plant in the shared temp folder before the app starts: the app's old fixed
# folder and Gradio's default one, both as symlinks to a folder of the attacker's holding a file.
PLANTED = ("gprune-explorer", "gradio")
PLANTED_TARGET, PLANTED_FILE = "attacker", "keep.txt"


@pytest.fixture(scope="session")
def limits_app(tmp_path_factory):
    """A second app with a session cap of 2 (and the default 2 h TTL), an upload quota of 3 MB per client address,
    a canary `HF_TOKEN` in its environment, no GRADIO_TEMP_DIR, and `PLANTED` symlinks in its TMPDIR
    (`AppProcess.log_path.parent`)."""
    folder = tmp_path_factory.mktemp("limits_app")
    target = folder / PLANTED_TARGET
    target.mkdir()
    (target / PLANTED_FILE).write_text("the attacker's file")
    os.utime(target / PLANTED_FILE, (0, 0))  # older than any clean-up age
    for name in PLANTED:
        (folder / name).symlink_to(target, target_is_directory=True)
    env = dict(GPRUNE_MAX_SESSIONS=str(SHORT_MAX_SESSIONS), GPRUNE_UPLOAD_MB_PER_CLIENT=str(UPLOAD_QUOTA_MB),
               HF_TOKEN=SECRET_CANARY, GRADIO_TEMP_DIR="")
    with running_app(folder, env) as app:
        yield app


@pytest.fixture(scope="session")
def lookalike_dirs(tmp_path_factory):
    """The four look-alike checkpoint folders of tests/lookalikes.py, built once per test session."""
    from lookalikes import FAMILIES, build_lookalike

    return {key: build_lookalike(key, tmp_path_factory.mktemp(key)) for key in FAMILIES}


@pytest.fixture(scope="session")
def vqa_dataset(tmp_path_factory, tiny_model) -> Path:
    """The tests' VQA split (tests/vqa_helpers.py) saved with `save_to_disk`. The human answers of rows 0–2
    are built around the tiny model's own unpruned answer (10, 3 and 1 of 10 humans give it), so that the
    unpruned accuracy there is 1, 0.9 and 0.3 and pruning can lose it."""
    import torch

    from gprune import AnalysisConfig, encode, run_method
    from gprune.evaluate import VQA_PROMPT_SUFFIX
    from gprune.images import load_image
    from vqa_helpers import MAX_NEW_TOKENS, save_to_disk, vqa_rows

    rows = vqa_rows()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the evaluation runs it (--threads 1)
    try:
        answers = {}
        for row, agreeing in ((0, 10), (1, 3), (2, 1)):
            encoded = encode(tiny_model, load_image(rows[row]["image"]["bytes"]), rows[row]["question"] + VQA_PROMPT_SUFFIX)
            answer = run_method(tiny_model, encoded, "unpruned", AnalysisConfig(max_new_tokens=MAX_NEW_TOKENS)).answer
            answers[row] = [answer] * agreeing + ["no"] * (10 - agreeing)
    finally:
        torch.set_num_threads(threads)
    return save_to_disk(vqa_rows(answers), tmp_path_factory.mktemp("vqa") / "textvqa-mini")


class EvaluatedRun:
    """A finished `python -m gprune.evaluate` run folder (`folder`, inside `runs`) and what it printed."""

    def __init__(self, runs, folder, stdout):
        self.runs, self.folder, self.stdout = runs, folder, stdout


@pytest.fixture(scope="session")
def evaluated_run(tmp_path_factory, vqa_dataset) -> EvaluatedRun:
    """One process, every method at keep ratios 0.5 and 0.11, on `vqa_dataset`: the reference run of the tests."""
    from vqa_helpers import run_evaluate

    runs = tmp_path_factory.mktemp("runs")
    done = run_evaluate(vqa_dataset, runs / "tiny-textvqa-mini")
    assert done.returncode == 0, done.stderr[-3000:]
    return EvaluatedRun(runs, runs / "tiny-textvqa-mini", done.stdout)

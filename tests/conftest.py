"""Shared pytest fixtures (append new fixtures below; keep each one small)."""

import pytest

from gprune.loading import LoadedModel, load_model


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


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """`python app.py` (tiny model) on a free port with GRADIO_SERVER_PORT; yields its URL, stopped at the end."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    folder = tmp_path_factory.mktemp("app_server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GPRUNE_MODEL="tiny", GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_TEMP_DIR=str(folder / "gradio"), TMPDIR=str(folder))
    env.pop("GRADIO_SERVER_NAME", None)
    log = open(folder / "server.log", "wb")
    process = subprocess.Popen([sys.executable, "app.py"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with {process.returncode}:\n{(folder / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not answer on {url}:\n{(folder / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()

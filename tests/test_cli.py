"""`python -m gprune` end to end on the tiny model."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from gprune import METHODS
from gprune.__main__ import main


def test_cli_writes_summary_and_arrays_for_every_method(tmp_path, capsys):
    image_path = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(image_path)
    out = tmp_path / "out"
    code = main([str(image_path), "What is shown?", "--model", "tiny", "--keep-ratio", "0.25",
                 "--max-new-tokens", "4", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == set(METHODS)
    assert summary["grid"] == {"rows": 36, "cols": 48, "visual_tokens": 2340}
    assert summary["config"]["keep_ratio"] == 0.25 and summary["random_weights"] is True
    arrays = np.load(out / "tokens.npz")
    for method in METHODS:
        assert len(arrays[f"{method}_kept"]) == summary["results"][method]["tokens_after"] == 144 + 432 + 36
    assert arrays["gprune_scores"].shape == (6, 2340)
    assert arrays["tome_group_of"].max() == len(arrays["tome_kept"]) - 1
    printed = capsys.readouterr()
    assert "G-Prune" in printed.out and "random weights" in printed.err and "[100%] done" in printed.err


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    assert main([str(bad), "What?", "--model", "tiny"]) == 2
    assert "could not be decoded" in capsys.readouterr().err
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 48), "white").save(good)
    assert main([str(good), "What?", "--model", "tiny", "--keep-ratio", "3"]) == 2
    assert "keep_ratio" in capsys.readouterr().err

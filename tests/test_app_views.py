"""The app's pure rendering glue (app_views) on a real tiny-model Analysis: no server, no Gradio."""

import io
import json
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

import app_views as views
from gprune import KIND_NEWLINE


@pytest.fixture(scope="module")
def session(tiny_analysis):
    return views.new_session(tiny_analysis)


def test_canvas_maps_cover_the_view_tokens_and_never_newlines(session, tiny_analysis):
    layout = tiny_analysis.layout
    height, width = session.canvas.image.shape[:2]
    assert max(height, width) <= views.DISPLAY_MAX_SIDE
    assert session.canvas.image.dtype == np.uint8
    newlines = set(layout.positions(KIND_NEWLINE).tolist())
    for view, positions in (("base", layout.positions(0)), ("grid", layout.positions(1))):
        index_map = session.canvas.maps[view]
        assert index_map.shape == (height, width)
        drawn = set(np.unique(index_map[index_map >= 0]).tolist())
        assert drawn <= set(positions.tolist())
        assert not drawn & newlines
    # The base view stretches 24×24 cells over the whole image, so every base token is drawn.
    assert len(np.unique(session.canvas.maps["base"])) == 576


def test_iteration_pictures_follow_the_stored_scores(session, tiny_analysis):
    last = tiny_analysis.config.iterations
    final_heat, final_mask, caption = views.iteration_pictures(session, "grid", last)
    assert final_heat.shape == session.canvas.image.shape and final_mask.shape == session.canvas.image.shape
    assert f"Iteration {last} of {last}" in caption
    # At the last iteration the recomputed kept set is G-Prune's own selection.
    kept = views.kept_at(session, last)
    assert np.array_equal(np.flatnonzero(kept), tiny_analysis.results["gprune"].kept_positions)
    first_heat, first_mask, _ = views.iteration_pictures(session, "grid", 0)
    assert not np.array_equal(first_heat, final_heat)
    assert views.kept_at(session, 0).sum() == kept.sum()  # same budget at every iteration
    base_heat, _, _ = views.iteration_pictures(session, "base", last)
    assert not np.array_equal(base_heat, final_heat)


def test_iteration_redraw_is_fast(session, tiny_analysis):
    views.iteration_pictures(session, "grid", 1)  # warm the kept-set cache for this iteration
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        views.iteration_pictures(session, "grid", 1)
        timings.append(time.perf_counter() - start)
    print(f"iteration redraw: median {np.median(timings) * 1e3:.1f} ms")
    assert np.median(timings) < 0.1


@pytest.mark.parametrize("bad", [-1, 99, 1.5, "2", None])
def test_bad_iteration_is_a_value_error(session, bad):
    with pytest.raises(ValueError, match="iteration"):
        views.iteration_pictures(session, "grid", bad)


def test_bad_view_is_a_value_error(session):
    with pytest.raises(ValueError, match="view"):
        views.iteration_pictures(session, "newline", 0)


def test_method_pictures_one_per_method_and_tome_shows_groups(session, tiny_analysis):
    pictures = views.method_pictures(session, "grid")
    assert [caption.split(":")[0].split(" (")[0] for _, caption in pictures] == ["G-Prune", "FastV", "ToMe", "L2-norm", "Random"]
    for picture, _ in pictures:
        assert picture.shape == session.canvas.image.shape
    gprune_picture, tome_picture = pictures[0][0], pictures[2][0]
    assert not np.array_equal(gprune_picture, tome_picture)


def test_comparison_html_has_every_answer_escaped(tiny_analysis):
    page = views.comparison_html(tiny_analysis)
    assert page.count("<tr>") == 1 + 1 + len(tiny_analysis.results)
    for label in ("Unpruned", "G-Prune", "FastV", "ToMe", "L2-norm", "Random"):
        assert f"<b>{label}</b>" in page
    assert "word-diff" in page
    assert "<script" not in page


def test_difference_counts_add_up(session, tiny_analysis):
    picture, text = views.difference_picture(session, "gprune", "fastv", "grid")
    assert picture.shape == session.canvas.image.shape
    grid_tokens = len(tiny_analysis.layout.positions(1))
    numbers = [int(part.split("**")[0].replace(",", "")) for part in text.split("**")[1::2]]
    assert sum(numbers) == grid_tokens
    _, text_same = views.difference_picture(session, "gprune", "gprune", "grid")
    assert "only: **0**" in text_same
    with pytest.raises(ValueError, match="not run"):
        views.difference_picture(session, "gprune", "nonsense", "grid")


def test_inspect_token_reports_graph_facts(session, tiny_analysis):
    layout = tiny_analysis.layout
    found = views.inspect_token(session, "grid", layout.image_width / 2, layout.image_height / 2)
    assert layout.kind[found.token] == 1
    assert found.highlight.shape == session.canvas.image.shape
    assert isinstance(found.trace, Image.Image)
    degree = int(tiny_analysis.results["gprune"].selection.degree[found.token])
    assert f"**{degree}**" in found.markdown
    for label in ("G-Prune", "FastV", "ToMe", "L2-norm", "Random"):
        assert f"{label}: " in found.markdown
    base = views.inspect_token(session, "base", 1, 1)
    assert base.token == 0  # top-left base cell
    with pytest.raises(ValueError, match="outside"):
        views.inspect_token(session, "grid", layout.image_width + 50, 0)


def test_learn_plots(session, tiny_analysis):
    for view in views.VIEWS:
        assert isinstance(views.similarity_picture(tiny_analysis, view), Image.Image)
        assert isinstance(views.score_picture(session, view, 0), Image.Image)
        assert "mean degree" in views.graph_facts(tiny_analysis, view)


def test_similarity_sample_is_cosine_of_distinct_pairs():
    features = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=np.float32)
    sample = views.similarity_sample(features, np.arange(3), pairs=500)
    expected = np.array([0.0, np.sqrt(0.5)])  # never a token with itself (1.0)
    assert np.abs(sample[:, None] - expected[None]).min(axis=1).max() < 1e-6
    assert np.isclose(sample, 0.0).any() and np.isclose(sample, np.sqrt(0.5)).any()


def test_gif_has_one_frame_per_iteration(session, tiny_analysis):
    data = views.iterations_gif(session, "grid")
    with Image.open(io.BytesIO(data)) as gif:
        assert gif.format == "GIF"
        assert 2 <= gif.n_frames <= tiny_analysis.config.iterations + 1


def test_export_zip_is_complete_and_reproducible(session, tiny_analysis):
    session.stability = {"keep_ratios": [1.0, 0.5], "curves": {"unpruned": [-1.0, -1.0], "gprune": [-1.0, -2.0]}}
    try:
        data = views.export_zip(session)
    finally:
        session.stability = None
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        for required in ("summary.json", "tokens.npz", "answers.json", "config.json", "input.png", "README.txt",
                         "stability.json", "figures/stability.png", "figures/grid_gprune_scores.png",
                         "figures/base_tome.png", "figures/grid_iterations.gif", "figures/grid_similarity_histogram.png"):
            assert required in names, required
        assert sum(name.endswith(".png") for name in names) >= 20
        summary = json.loads(archive.read("summary.json"))
        assert summary["config"]["keep_ratio"] == tiny_analysis.config.keep_ratio
        config = json.loads(archive.read("config.json"))
        assert config["reproduce"].startswith("python -m gprune input.png")
        assert "--keep-ratio 0.25" in config["reproduce"] and "--fastv-layer 1" in config["reproduce"]
        answers = json.loads(archive.read("answers.json"))
        assert answers["unpruned"] == tiny_analysis.reference.answer
        with np.load(io.BytesIO(archive.read("tokens.npz"))) as arrays:
            assert arrays["gprune_scores"].shape == (tiny_analysis.config.iterations + 1, tiny_analysis.layout.n_tokens)
            assert np.array_equal(arrays["gprune_kept"], tiny_analysis.results["gprune"].kept_positions)
        with Image.open(io.BytesIO(archive.read("input.png"))) as image:
            assert image.size == tiny_analysis.image.size


def test_stability_picture():
    picture = views.stability_picture({"keep_ratios": [1.0, 0.5], "curves": {"gprune": [-1.0, -2.0]}}, "a cat")
    assert isinstance(picture, Image.Image)

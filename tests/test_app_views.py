"""The app's pure rendering glue (app_views) on a real tiny-model Analysis: no server, no Gradio."""

import dataclasses
import datetime
import io
import json
import re
import time
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import app_views as views
import viz
from gprune import KIND_NEWLINE, LLAVA_NEXT_7B, Timing, gprune_select, prefill_flops_ratio, token_budget


@pytest.fixture(scope="module")
def session(tiny_analysis):
    return views.new_session(tiny_analysis, image_name="Grace Hopper (1).JPG")


@pytest.fixture
def fresh(tiny_analysis):
    """A session of its own, for tests that change the keep ratio or the colour mode."""
    return views.new_session(tiny_analysis)


def changed_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels whose colour differs visibly (any channel by ≥ 32 of 255)."""
    return float((np.abs(a.astype(int) - b.astype(int)).max(-1) >= 32).mean())


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


def test_rank_colours_show_what_changes_between_iterations(fresh):
    """With a linear scale most tokens share one colour; rank colours make the iterations' changes visible."""
    shares = {}
    for mode in views.COLOUR_MODES:
        views.set_display(fresh, colour_mode=mode)
        shares[mode] = changed_share(views.heatmap_picture(fresh, "grid", 1), views.heatmap_picture(fresh, "grid", 3))
    print(f"pixels changed between t = 1 and t = 3: {shares}")
    assert shares["rank"] > 0.05 and shares["rank"] > 2 * shares["linear"]
    with pytest.raises(ValueError, match="colour mode"):
        views.set_display(fresh, colour_mode="rainbow")


def test_heatmap_legend_marks_the_keep_cut(session, tiny_analysis):
    legend = views.heatmap_legend(session, "grid", 3)
    grid_tokens = len(tiny_analysis.layout.positions(1))
    kept = int(views.kept_at(session, 3)[tiny_analysis.layout.positions(1)].sum())
    # Rank colours: the cut sits where the dropped share of the view ends.
    assert legend.cut == pytest.approx(1 - kept / grid_tokens, abs=2 / grid_tokens)
    assert f"top {kept:,}" in legend.cut_label and "rank" in legend.title


def test_mask_marks_tokens_entering_and_leaving_the_kept_set(session, tiny_analysis):
    entered, left = views.iteration_changes(session, "grid", 1)
    assert entered == left > 0  # same budget at every iteration
    mask = views.mask_picture(session, "grid", 1)
    for colour in (viz.ENTERED_RGB, viz.LEFT_RGB):
        assert (mask == colour).all(-1).any()
    assert not (views.mask_picture(session, "grid", 0) == viz.ENTERED_RGB).all(-1).any()
    caption = views.iteration_caption(session, "grid", 1)
    assert f"**{entered}** entered the kept set, **{left}** left it" in caption
    assert "entered since iteration 0" in viz.legend_html(views.mask_legend(1))


def test_an_iteration_redraw_reuses_the_kept_sets_it_computed(session, monkeypatch):
    """A redraw's cost is the drawing, not the ranking: each (iteration, ratio) is ranked once (bench/ times it)."""
    first = views.iteration_pictures(session, "grid", 1)
    ranked = []
    monkeypatch.setattr(views, "keep_top_per_view", lambda *args: ranked.append(args) or pytest.fail("ranked again"))
    again = views.iteration_pictures(session, "grid", 1)
    assert ranked == [] and all(np.array_equal(a, b) for a, b in zip(first[:2], again[:2])) and first[2] == again[2]


@pytest.mark.parametrize("bad", [-1, 99, 1.5, "2", None])
def test_bad_iteration_is_a_value_error(session, bad):
    with pytest.raises(ValueError, match="iteration"):
        views.iteration_pictures(session, "grid", bad)


def test_bad_view_is_a_value_error(session):
    with pytest.raises(ValueError, match="view"):
        views.iteration_pictures(session, "newline", 0)


def test_method_pictures_one_per_method_titled_above_the_picture(session, tiny_analysis):
    pictures = views.method_pictures(session, "grid")
    assert [caption for _, caption in pictures] == ["G-Prune", "FastV", "ToMe", "L2-norm", "Random"]
    height, width, _ = session.canvas.image.shape
    for picture, _ in pictures:
        assert picture.shape[1] == width and picture.shape[0] > height  # a title strip on top
    kept = tiny_analysis.results["gprune"].selection.kept_mask(tiny_analysis.layout.n_tokens)
    untitled = viz.mask_overlay(session.canvas.image, session.canvas.maps["grid"], kept)
    assert np.array_equal(pictures[0][0][-height:], untitled)  # nothing written over the picture
    gprune_picture, tome_picture = pictures[0][0], pictures[2][0]
    assert not np.array_equal(gprune_picture, tome_picture)


def test_redraw_at_the_run_ratio_is_what_every_method_kept(tiny_analysis):
    for method, result in tiny_analysis.results.items():
        redrawn = views.redraw_selection(tiny_analysis, method, tiny_analysis.config.keep_ratio)
        assert np.array_equal(redrawn.kept_positions, result.kept_positions), method
        if result.selection.groups is not None:
            assert all(np.array_equal(a, b) for a, b in zip(redrawn.groups, result.selection.groups))


def test_keep_ratio_redraw_uses_stored_data_only(fresh, tiny_analysis, monkeypatch):
    def no_model_call(*args, **kwargs):
        raise AssertionError("the keep-ratio redraw called a torch module (the model)")

    monkeypatch.setattr(torch.nn.Module, "__call__", no_model_call)
    layout = tiny_analysis.layout
    start = time.perf_counter()
    views.set_display(fresh, keep_ratio=0.1)
    pictures = views.method_pictures(fresh, "grid")
    print(f"keep-ratio redraw of 5 methods: {(time.perf_counter() - start) * 1e3:.0f} ms")
    assert len(pictures) == len(tiny_analysis.results)
    budget = sum(token_budget(layout.rows, layout.cols, 0.1)) + layout.rows
    for method in tiny_analysis.results:
        assert len(views.selection_at(fresh, method).kept_positions) == budget, method
    # G-Prune's redraw is exactly what G-Prune run at that ratio keeps.
    monkeypatch.undo()
    direct = gprune_select(torch.from_numpy(tiny_analysis.features), layout.rows, layout.cols, 0.1,
                           iterations=tiny_analysis.config.iterations)
    assert np.array_equal(views.selection_at(fresh, "gprune").kept_positions, direct.kept_positions)
    assert "redrawn at **ρ = 0.1**" in views.ratio_notice(fresh) and "run at **ρ = 0.25**" in views.ratio_notice(fresh)
    assert "at ρ = 0.1" in views.iteration_caption(fresh, "grid", 3)
    views.set_display(fresh, keep_ratio=0.25)
    assert "the ratio that was run" in views.ratio_notice(fresh)
    with pytest.raises(ValueError, match="keep_ratio"):
        views.set_display(fresh, keep_ratio=0)


def test_comparison_html_is_honest_about_a_toy_model(tiny_analysis):
    page = views.comparison_html(tiny_analysis)
    assert page.count("<tr>") == 1 + 1 + len(tiny_analysis.results)
    for label in ("Unpruned", "G-Prune", "FastV", "ToMe", "L2-norm", "Random"):
        assert f"<b>{label}</b>" in page
    assert "Toy model with random weights" in page and "FLOPs at LLaVA-NeXT-7B shapes" in page
    assert "at <b>ρ = 0.25</b> (the ratio that was run)" in page
    for result in tiny_analysis.results.values():
        expected = prefill_flops_ratio(result.sequence_before, result.sequence_after, LLAVA_NEXT_7B,
                                       tiny_analysis.config.fastv_layer if result.method == "fastv" else 0)
        assert tiny_analysis.reported_flops_ratio(result) == expected
        assert f"{expected:.1%}" in page
    # Single-sample timings are never shown; unmeasured timings say so.
    assert " ms" not in page and "not measured" in page
    assert "<script" not in page


def test_comparison_html_shows_measured_timings_and_real_flops(tiny_analysis):
    timing = Timing((0.070, 0.074, 0.081))
    measured = dataclasses.replace(
        tiny_analysis, random_weights=False,
        reference=dataclasses.replace(tiny_analysis.reference, prefill_timing=timing),
        results={m: dataclasses.replace(r, selection_timing=timing, prefill_timing=timing)
                 for m, r in tiny_analysis.results.items()})
    page = views.comparison_html(measured)
    assert page.count("74 ms (70–81, 3 runs)") == 1 + 2 * len(measured.results)
    assert "Toy model" not in page and "7B shapes" not in page
    assert f"{measured.results['fastv'].flops_ratio:.1%}" in page


@pytest.mark.parametrize("samples, text", [(None, "—"), ((0.0042, 0.0040, 0.0051), "4.2 ms (4–5.1, 3 runs)"),
                                           ((1.5543, 1.2, 2.0), "1,554 ms (1,200–2,000, 3 runs)")])
def test_timing_text(samples, text):
    assert views.timing_text(Timing(samples) if samples else None) == text


def test_answers_fold_and_diff(tiny_analysis):
    reference = "a b c d e f g h i j k l"
    folded = views.answer_html(reference)
    assert folded.startswith("<details") and "a b c d e f g h i j …" in folded
    assert "= unpruned answer" in views.answer_html(reference, reference)
    diff = views.answer_html("a <b>x</b> c", reference)
    assert "<del" in diff and "&lt;b&gt;" in diff and "<b>x" not in diff and "(−" in diff


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
    assert (found.highlight == viz.overlay.EDGE_RGB).all(-1).sum() > 20  # the token's edges are drawn
    assert isinstance(found.trace, Image.Image)
    degree = int(tiny_analysis.results["gprune"].selection.degree[found.token])
    assert f"**{degree}**" in found.markdown
    row, col = layout.cell[found.token]
    assert f"**Token at r{row} c{col}**" in found.markdown
    sources = found.markdown.split("Strongest sources")[1].split("\n")[0]
    assert re.search(r": r\d+ c\d+ \(", sources) and not re.search(r"\b\d{3,}\b \(", sources)  # rows/cols, not ids
    for label in ("G-Prune", "FastV", "ToMe", "L2-norm", "Random"):
        assert f"{label}: " in found.markdown
    assert "representativegroup" not in found.markdown
    base = views.inspect_token(session, "base", 1, 1)
    assert base.token == 0  # top-left base cell
    with pytest.raises(ValueError, match="outside"):
        views.inspect_token(session, "grid", layout.image_width + 50, 0)


def test_tome_fate_names_the_group(session, tiny_analysis):
    tome = tiny_analysis.results["tome"].selection
    merged = next(g for g in tome.groups if len(g) > 1)
    representative, member = int(merged[np.isin(merged, tome.kept_positions)][0]), int(merged[~np.isin(merged, tome.kept_positions)][0])
    assert views._fate(session, "tome", representative) == f"ToMe: kept, representing a group of {len(merged)}"
    row, col = tiny_analysis.layout.cell[representative]
    assert views._fate(session, "tome", member) == f"ToMe: merged into r{row} c{col} (a group of {len(merged)})"


def test_learn_plots(session, tiny_analysis):
    for view in views.VIEWS:
        assert isinstance(views.similarity_picture(tiny_analysis, view), Image.Image)
        assert isinstance(views.score_picture(session, view, 0), Image.Image)
        assert "mean degree" in views.graph_facts(tiny_analysis, view)


def test_similarity_sample_is_cosine_of_distinct_pairs():
    from gprune.stats import pair_similarities

    features = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=np.float32)
    sample = pair_similarities(features, np.arange(3), pairs=500)
    expected = np.array([0.0, np.sqrt(0.5)])  # never a token with itself (1.0)
    assert np.abs(sample[:, None] - expected[None]).min(axis=1).max() < 1e-6
    assert np.isclose(sample, 0.0).any() and np.isclose(sample, np.sqrt(0.5)).any()


def test_gif_has_one_frame_per_iteration(session, tiny_analysis):
    data = views.iterations_gif(session, "grid")
    with Image.open(io.BytesIO(data)) as gif:
        assert gif.format == "GIF"
        assert 2 <= gif.n_frames <= tiny_analysis.config.iterations + 1


def test_export_zip_has_slide_ready_figures_and_is_reproducible(session, tiny_analysis):
    session.stability = {"keep_ratios": [1.0, 0.5], "curves": {"unpruned": [-1.0, -1.0], "gprune": [-1.0, -2.0]}}
    try:
        data = views.export_zip(session)
    finally:
        session.stability = None
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        for required in ("summary.json", "tokens.npz", "answers.json", "config.json", "input.png", "README.txt",
                         "stability.json", "figures/answer-stability-sweep.png", "figures/grid-gprune-iteration-3-scores.png",
                         "figures/base-tome-kept.png", "figures/grid-gprune-iterations.gif",
                         "figures/grid-similarity-histogram.png", "figures/grid-gprune-score-histogram.png"):
            assert required in names, required
        figures = [name for name in names if name.startswith("figures/") and name.endswith(".png")]
        assert len(figures) == 2 * (3 + len(tiny_analysis.results) + 1) + 1
        for name in figures:
            with Image.open(io.BytesIO(archive.read(name))) as figure:
                assert figure.width >= 1024, name
        with Image.open(io.BytesIO(archive.read("figures/grid-gprune-iteration-3-kept.png"))) as slide:
            assert slide.width == 1280
            # Title above and legend below the picture: white bands at the top and the bottom.
            pixels = np.asarray(slide.convert("RGB"))
            assert (pixels[:10] == 255).mean() > 0.9 and (pixels[-10:] == 255).mean() > 0.9
        summary = json.loads(archive.read("summary.json"))
        assert summary["config"]["keep_ratio"] == tiny_analysis.config.keep_ratio
        config = json.loads(archive.read("config.json"))
        assert config["reproduce"].startswith("python -m gprune input.png")
        assert "--keep-ratio 0.25" in config["reproduce"] and "--fastv-layer 1" in config["reproduce"]
        answers = json.loads(archive.read("answers.json"))
        assert answers["unpruned"] == tiny_analysis.reference.answer
        assert "Toy model" in archive.read("README.txt").decode()
        with np.load(io.BytesIO(archive.read("tokens.npz"))) as arrays:
            assert arrays["gprune_scores"].shape == (tiny_analysis.config.iterations + 1, tiny_analysis.layout.n_tokens)
            assert np.array_equal(arrays["gprune_kept"], tiny_analysis.results["gprune"].kept_positions)
        with Image.open(io.BytesIO(archive.read("input.png"))) as image:
            assert image.size == tiny_analysis.image.size


def test_export_names_say_what_they_hold(session):
    assert views.export_name(session, ".zip", datetime.date(2026, 11, 30)) == "gprune-grace-hopper-1-keep0.25-2026-11-30.zip"
    assert views.gif_name(session, "base") == "gprune-grace-hopper-1-base-iterations-keep0.25.gif"
    assert views.file_stem("../../etc/passwd") == "passwd" and views.file_stem("???.png") == "image"


def test_stability_picture(tiny_analysis):
    picture = views.stability_picture({"keep_ratios": [1.0, 0.5], "curves": {"gprune": [-1.0, -2.0]}}, tiny_analysis)
    assert isinstance(picture, Image.Image)

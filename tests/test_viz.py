"""Unit tests of the viz package on synthetic arrays (no model, no gprune)."""

import io

import numpy as np
import pytest
from PIL import Image

import viz.overlay as viz_overlay

from viz import (
    accuracy_plot,
    ENTERED_RGB,
    LEFT_RGB,
    ColourBar,
    Swatches,
    difference_overlay,
    fit_scale,
    gif_bytes,
    groups_overlay,
    heatmap_overlay,
    highlight_tokens,
    legend_html,
    legend_picture,
    mask_overlay,
    score_histogram,
    score_trace_plot,
    similarity_histogram,
    slide,
    speedup_plot,
    stability_plot,
    title_strip,
    titled,
    token_at,
    token_centres,
    token_index_map,
    word_diff_counts,
    word_diff_html,
)


def grid_boxes(rows: int, cols: int, height: float, width: float) -> np.ndarray:
    """`(rows * cols, 4)` float boxes tiling a `height × width` image row by row."""
    r, c = np.divmod(np.arange(rows * cols), cols)
    cw, ch = width / cols, height / rows
    return np.stack([c * cw, r * ch, (c + 1) * cw, (r + 1) * ch], -1)


@pytest.fixture
def scene():
    """A 4×6 image split into a 2×2 grid of tokens 1..4 (token 0 is a newline-like NaN box)."""
    boxes = np.vstack([np.full((1, 4), np.nan), grid_boxes(2, 2, 4, 6)])
    index_map = token_index_map(boxes, np.arange(5), 4, 6)
    image = np.full((4, 6, 3), 200, np.uint8)
    image[..., 0] = 120
    return image, index_map, boxes


def test_two_by_two_grid_maps_pixels_to_cells(scene):
    _, index_map, _ = scene
    expected = np.array([[1, 1, 1, 2, 2, 2]] * 2 + [[3, 3, 3, 4, 4, 4]] * 2)
    np.testing.assert_array_equal(index_map, expected)
    assert index_map.dtype == np.int32


def test_token_at_inverts_boxes(scene):
    _, index_map, boxes = scene
    for token in range(1, 5):
        x0, y0, x1, y1 = boxes[token]
        assert token_at(index_map, (x0 + x1) / 2, (y0 + y1) / 2) == token
        assert token_at(index_map, x0, y0) == token
    assert token_at(index_map, 6.0, 4.0) == 4  # the far edge clamps to the border pixel
    assert token_at(index_map, -3, 0) == 1
    with pytest.raises(ValueError):
        token_at(index_map, float("nan"), 0)


def test_uncovered_pixels_are_minus_one():
    index_map = token_index_map(np.array([[0.0, 0.0, 2.0, 2.0]]), np.array([0]), 4, 4)
    assert (index_map[:2, :2] == 0).all() and (index_map[2:] == -1).all() and (index_map[:, 2:] == -1).all()


@pytest.mark.parametrize("height, width, rows, cols", [(480, 640, 24, 24), (1008, 1344, 45, 52), (37, 53, 7, 11)])
def test_float_boxes_tile_without_gaps_or_overlaps(height, width, rows, cols):
    boxes = grid_boxes(rows, cols, height, width)
    index_map = token_index_map(boxes, np.arange(len(boxes)), height, width)
    assert (index_map >= 0).all()
    # Every pixel is covered exactly once: the per-box rasterised areas sum to the image area.
    edges = np.floor(boxes + 0.5).astype(int)
    areas = (edges[:, 2] - edges[:, 0]) * (edges[:, 3] - edges[:, 1])
    assert areas.sum() == height * width
    np.testing.assert_array_equal(np.bincount(index_map.ravel(), minlength=len(boxes)), areas)


def test_token_index_map_rejects_bad_arguments():
    boxes = grid_boxes(2, 2, 4, 4)
    with pytest.raises(ValueError):
        token_index_map(boxes[:, :3], np.arange(4), 4, 4)
    with pytest.raises(ValueError):
        token_index_map(boxes, np.array([4]), 4, 4)
    with pytest.raises(ValueError):
        token_index_map(boxes, np.arange(4), 0, 4)


def test_overlays_keep_size_and_dtype(scene):
    image, index_map, _ = scene
    values = np.arange(5, dtype=float)
    kept = np.array([False, True, False, True, False])
    outputs = [
        heatmap_overlay(image, index_map, values),
        mask_overlay(image, index_map, kept),
        groups_overlay(image, index_map, np.array([-1, 0, 0, 1, 1])),
        difference_overlay(image, index_map, kept, ~kept)[0],
        highlight_tokens(image, index_map, 1, np.array([2, -1]), np.array([1.0, 0.0])),
    ]
    for out in outputs:
        assert out.shape == image.shape and out.dtype == np.uint8


def test_heatmap_colours_by_value_and_skips_nan(scene):
    image, index_map, _ = scene
    values = np.array([0.0, 0.0, 1.0, np.nan, 0.5])
    out = heatmap_overlay(image, index_map, values)
    assert not np.array_equal(out[0, 0], out[0, 5])  # token 1 (low) vs token 2 (high)
    np.testing.assert_array_equal(out[2:, :3], image[2:, :3])  # token 3 is NaN
    assert not np.array_equal(out[0, 0], image[0, 0])


def test_heatmap_rejects_bad_arguments(scene):
    image, index_map, _ = scene
    with pytest.raises(ValueError):
        heatmap_overlay(image, index_map, np.zeros(3))  # fewer values than tokens in the map
    with pytest.raises(ValueError):
        heatmap_overlay(image, index_map, np.zeros(5), alpha=2.0)
    with pytest.raises(ValueError):
        heatmap_overlay(image, index_map, np.zeros(5), cmap="no-such-map")


def test_mask_dims_dropped_and_keeps_kept(scene):
    image, index_map, _ = scene
    kept = np.array([False, True, False, True, False])
    out = mask_overlay(image, index_map, kept, outline=False)
    np.testing.assert_array_equal(out[index_map == 1], image[index_map == 1])
    np.testing.assert_array_equal(out[index_map == 3], image[index_map == 3])
    dropped = (index_map == 2) | (index_map == 4)
    assert (out[dropped].astype(int).sum(-1) < image[dropped].astype(int).sum(-1)).all()
    assert not np.array_equal(mask_overlay(image, index_map, kept, outline=True), out)


def test_mask_tints_tokens_that_entered_or_left(scene):
    image, index_map, _ = scene
    kept = np.array([False, True, True, False, False])
    previous = np.array([False, True, False, True, False])  # token 2 entered, token 3 left
    out = mask_overlay(image, index_map, kept, previous=previous, alpha=1.0, outline=False)
    assert (out[index_map == 2] == ENTERED_RGB).all() and (out[index_map == 3] == LEFT_RGB).all()
    np.testing.assert_array_equal(out[index_map == 1], image[index_map == 1])  # kept at both steps: as it is
    with pytest.raises(ValueError):
        mask_overlay(image, index_map, kept, previous=previous[:3])


def test_groups_get_distinct_colours(scene):
    image, index_map, _ = scene
    out = groups_overlay(image, index_map, np.array([-1, 7, 7, 8, 8]), alpha=0.5)
    assert not np.array_equal(out[0, 0], out[3, 0])  # group 7 vs group 8 (away from the border row)
    singleton = groups_overlay(image, index_map, np.array([-1, 7, 8, 9, 9]))
    np.testing.assert_array_equal(singleton[0, 0], image[0, 0])  # single-token groups stay uncoloured


def test_difference_counts(scene):
    image, index_map, _ = scene
    kept_a = np.array([True, True, True, False, False])
    kept_b = np.array([True, True, False, True, False])
    out, counts = difference_overlay(image, index_map, kept_a, kept_b)
    # Token 0 has no pixels, so it is not counted.
    assert counts == {"a_only": 1, "b_only": 1, "both": 1, "neither": 1}
    np.testing.assert_array_equal(out[index_map == 1], image[index_map == 1])
    assert not np.array_equal(out[0, 5], out[3, 0])  # A-only and B-only tints differ


def test_highlight_outlines_focus_and_tints_by_weight():
    image = np.full((60, 60, 3), 100, np.uint8)
    index_map = token_index_map(grid_boxes(3, 3, 60, 60), np.arange(9), 60, 60)
    out = highlight_tokens(image, index_map, 4, np.array([0, 8, -1]), np.array([1.0, 0.25, 5.0]))
    change = np.abs(out.astype(int) - image).sum(-1)
    assert change[10, 10] > change[50, 50] > 0  # heavier neighbour tinted more
    assert change[30, 18] > 0 and change[24, 36] == 0  # ring just outside the focus, its inside off the edges untouched
    assert change[30, 30] > 0 and change[40, 40] > 0  # the edges start at the focus centre
    assert change[10, 50] == 0  # not a neighbour


def test_highlight_draws_edges_wider_for_heavier_weights():
    image = np.full((90, 90, 3), 100, np.uint8)
    index_map = token_index_map(grid_boxes(3, 3, 90, 90), np.arange(9), 90, 90)
    out = highlight_tokens(image, index_map, 4, np.array([1, 7]), np.array([1.0, 0.2]), max_line_width=9)
    centres = token_centres(index_map, np.array([4, 1, 7]))
    np.testing.assert_allclose(centres, [[45, 45], [45, 15], [45, 75]])
    edge = viz_overlay.EDGE_RGB
    upward = (out[20:40, 35:56] == edge).all(-1).sum(1).max()  # line 4 → 1 (weight 1)
    downward = (out[50:70, 35:56] == edge).all(-1).sum(1).max()  # line 4 → 7 (weight 0.2)
    assert upward > downward > 0
    assert np.isnan(token_centres(index_map, np.array([99]))).all()  # a token with no pixels


def test_rank_scale_spreads_heavy_tailed_values_evenly():
    values = np.array([1e-6, 1e-5, 1e-4, 1e-4, 1.0, np.nan])
    shown = np.array([True, True, True, True, True, False])
    rank = fit_scale(values, shown, "rank")
    np.testing.assert_allclose(rank.positions(values)[:5], [0, 0.25, 0.625, 0.625, 1.0])  # ties share a mid rank
    assert np.isnan(rank.positions(values)[5])
    linear = fit_scale(values, shown, "linear").positions(values)
    assert (linear[:4] < 0.01).all()  # a linear scale paints the four small values one colour
    log = fit_scale(np.array([0.0, 1e-3, 1e-1, 10.0]), np.ones(4, bool), "log")
    assert log.positions(np.array([0.0]))[0] == 0.0 and log.position(10.0) == 1.0  # zeros sit at the bottom
    with pytest.raises(ValueError):
        fit_scale(values, shown, "sqrt")
    with pytest.raises(ValueError):
        fit_scale(np.array([np.nan]), np.array([True]))


def test_legends_render_as_html_and_pictures():
    bar = ColourBar("score <rank>", "inferno", "lowest", "highest", cut=0.75, cut_label="keep cut")
    swatches = Swatches("kept", (((255, 0, 0), "kept <b>"), ((0, 0, 0), "dropped")), outline=(255, 255, 255))
    html_bar, html_swatches = legend_html(bar), legend_html(swatches)
    assert "&lt;rank&gt;" in html_bar and "left:75.0%" in html_bar and "linear-gradient" in html_bar
    assert "kept &lt;b&gt;" in html_swatches and "#ff0000" in html_swatches
    for legend in (bar, swatches):
        strip = legend_picture(legend, 640)
        assert strip.dtype == np.uint8 and strip.shape[1] == 640 and 30 < strip.shape[0] < 200
    with pytest.raises(ValueError):
        legend_picture(ColourBar("x", "no-such-map", "a", "b"), 100)


def test_titles_and_slides_leave_the_picture_untouched():
    picture = np.full((48, 64, 3), 90, np.uint8)
    with_title = titled(picture, "G-Prune · ρ = 0.25 × 3")
    assert with_title.shape[1] == 64 and np.array_equal(with_title[-48:], picture)
    assert title_strip("a very long title " * 20, 200, note="toy").shape[1] == 200  # shrunk to fit
    figure = slide(picture, "title", legends=(Swatches("s", (((0, 0, 0), "a"),)),), note="Toy model")
    assert figure.width == 1280 and figure.height > 48 * 1280 / 64 * 0.5


def test_word_diff_escapes_html():
    result = word_diff_html("a cat on a mat", "a <script>alert(1)</script> on a mat")
    assert "<script>" not in result and "&lt;script&gt;" in result
    assert "<del" in result and "<ins" in result
    assert word_diff_counts("a cat on a mat", "a dog on the mat now") == (3, 2, 3)


def test_gif_round_trips_frame_count():
    frames = [np.full((8, 10, 3), value, np.uint8) for value in (0, 80, 160, 240)]
    data = gif_bytes(frames, duration_ms=100)
    with Image.open(io.BytesIO(data)) as gif:
        assert gif.n_frames == 4 and gif.size == (10, 8) and gif.info["loop"] == 0
    with pytest.raises(ValueError):
        gif_bytes([frames[0], np.zeros((9, 10, 3), np.uint8)])
    with pytest.raises(ValueError):
        gif_bytes([])


def test_plots_return_images():
    ratios = np.array([1.0, 0.5, 0.25, 0.1])
    images = [
        stability_plot(ratios, {"G-Prune": np.array([-1, -1.2, -2, -4.0]), "FastV": np.array([-1, -2, -3, -6.0])}, "a cat",
                       note="Toy model"),
        similarity_histogram(np.random.default_rng(0).uniform(-1, 1, 500), 0.5),
        score_histogram(np.random.default_rng(1).normal(size=300), 0.8),
        score_trace_plot(np.array([0.1, 0.3, 0.35, 0.36]), "token 812", cuts=np.array([0.2, 0.2, 0.3, 0.3])),
        speedup_plot(ratios, {"G-Prune": [1.0, 1.4, 1.8, 2.1]}, {"G-Prune": [1.0, 1.7, 2.5, 3.2]}),
        accuracy_plot(ratios, {"G-Prune": np.array([90, 85, 70, np.nan]), "Random": np.array([88, 80, 60, 40.0])}, 92.0,
                      "easy-VQA", note="small model trained here"),
    ]
    for image in images:
        assert isinstance(image, Image.Image) and image.width > 0 and image.height > 0
    with pytest.raises(ValueError):
        stability_plot(ratios, {"G-Prune": np.zeros(3)}, "a cat")
    with pytest.raises(ValueError):
        similarity_histogram(np.array([np.nan]), 0.5)
    with pytest.raises(ValueError, match="shape"):
        accuracy_plot(ratios, {"G-Prune": np.zeros(3)}, 90.0, "easy-VQA")
    assert stability_plot(ratios, {"G-Prune": -ratios}, "a cat", dpi=220).width >= 1024  # slide-ready


def test_score_histogram_puts_the_cut_where_it_can_be_seen():
    """Heavy-tailed scores (G-Prune's span decades) on a linear axis squeeze the cut against the left edge."""
    scores = np.random.default_rng(0).lognormal(mean=-9, sigma=2.0, size=3000)
    cut = float(np.quantile(scores, 0.75))
    picture = np.asarray(score_histogram(scores, cut)).astype(int)
    red = (np.abs(picture - (214, 39, 40)).sum(-1) < 40)  # tab:red, the dashed cut line
    columns = np.flatnonzero(red.sum(0) > 5)
    assert columns.size and columns.mean() / picture.shape[1] > 0.35

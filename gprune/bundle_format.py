"""What a precomputed bundle (gprune/bundle.py) must hold before the explorer serves it.

Bundles come from a folder on the server, and one that is damaged, of another program or crafted must be
refused when it is read, with the reason, never crash a view later or fill the memory. `check_meta` checks the
JSON: every field the reader and the views use, of the right kind, and consistent (results of exactly the
configured methods and the unpruned run, token counts that fit the layout). `array_specs` derives from it the
arrays the `.npz` must hold, their dtypes and shapes, which also bounds what reading them may allocate
(gprune/untrusted_npz.py). `check_arrays` checks their values: the layout the block's shape gives, positions in
range, sorted and unique, every newline kept, finite scores, ToMe's groups led by their kept token.
"""

from __future__ import annotations

import math
import re

import numpy as np

from .analysis import AnalysisConfig
from .graph import NEIGHBORS
from .layout import KIND_BASE, KIND_GRID, KIND_NEWLINE, block_kinds_and_cells
from .stats import SIMILARITY_PAIRS
from .untrusted_npz import ArraySpec

VIEW_KINDS = {"base": KIND_BASE, "grid": KIND_GRID}
# The keep ratios the explorer's slider offers (0.01 … 1 in steps of 0.01): ToMe's selection at each is stored.
KEEP_RATIO_GRID = tuple(round(0.01 * step, 2) for step in range(1, 101))
MAX_TOKENS = int(np.iinfo(np.int16).max)  # ToMe's groups per keep ratio are stored as int16
MAX_JSON_BYTES = 1 << 20  # answers, timings and the sweep of one example: kilobytes
SIMILARITY_ROUNDING = 1e-3  # float32 cosines of unit vectors may pass ±1 by a few ulps
MAX_TOKEN_ID = 2**31 - 1
LAYOUT_FIELDS = ("image_width", "image_height", "base_side", "rows", "cols")  # TokenLayout's, besides its arrays
NUMBER = (int, float)


def array_specs(meta: dict) -> dict[str, ArraySpec]:
    """The arrays a bundle with this metadata (passed by `check_meta`) holds, by key, with dtypes and shapes."""
    n = n_tokens(meta["layout"])
    specs = {}
    for method, facts in meta["results"].items():
        specs[f"{method}/kept"] = ArraySpec("i", (facts["tokens_after"],))
        specs.update({f"{method}/{key}": spec for key, spec in _selection_specs(method, n, meta["config"]["iterations"]).items()})
    specs.update({"layout/kind": ArraySpec("i", (n,)), "layout/cell": ArraySpec("i", (n, 2)),
                  "layout/box": ArraySpec("f", (n, 4))})
    specs.update({f"similarity/{view}": ArraySpec("f", (range(1, SIMILARITY_PAIRS + 1),)) for view in VIEW_KINDS})
    if "tome" in meta["results"]:
        ratios = range(1, len(KEEP_RATIO_GRID) + 1)
        specs.update({"tome_by_ratio/ratios": ArraySpec("f", (ratios,)), "tome_by_ratio/kept": ArraySpec("b", (ratios, n)),
                      "tome_by_ratio/group_of": ArraySpec("i", (ratios, n))})
    return specs


def _selection_specs(method: str, n: int, iterations: int) -> dict[str, ArraySpec]:
    """What each method's selection stores beside `kept`, all of which its views read."""
    if method == "unpruned":
        return {}
    if method == "tome":
        return {"group_of": ArraySpec("i", (n,))}
    if method == "gprune":
        sources = range(NEIGHBORS + 1)
        return {"scores": ArraySpec("f", (iterations + 1, n)), "degree": ArraySpec("fi", (n,)),
                "neighbors": ArraySpec("i", (n, sources)), "neighbor_weights": ArraySpec("f", (n, sources))}
    return {"scores": ArraySpec("f", (1, n))}  # FastV's attention row, L2 norms, Random's draws


def n_tokens(layout: dict) -> int:
    return layout["base_side"] ** 2 + layout["rows"] * (layout["cols"] + 1)


# ------------------------------------------------------------------------------------------------- metadata


def check_meta(meta) -> None:
    """ValueError (the reason, for a log line) unless `meta` is a bundle's metadata the reader can trust."""
    _fields(meta, "the metadata", created=str, code_version=str, arrays_sha256=str, model=dict, example=dict,
            config=dict, layout=dict, results=dict)
    model = _fields(meta["model"], "model", name=str, family=str, random_weights=bool, layers=int)
    if model["layers"] < 2:
        raise ValueError(f"model.layers is {model['layers']}; a LLaVA-NeXT model has at least 2")
    example = _fields(meta["example"], "example", image_sha256=str, question=str)
    if not re.fullmatch(r"[0-9a-f]{64}", example["image_sha256"]):
        raise ValueError("example.image_sha256 is not a SHA-256 in hex")
    if "system_text" not in example or not isinstance(example["system_text"], (str, type(None))):
        raise ValueError("example.system_text is missing or not text")
    config = _config(meta["config"], model["layers"])
    layout = _fields(meta["layout"], "layout", **dict.fromkeys(LAYOUT_FIELDS, int))
    if set(layout) != set(LAYOUT_FIELDS) or min(layout.values()) < 1:
        raise ValueError(f"layout is not {', '.join(LAYOUT_FIELDS)}, each at least 1")
    n = n_tokens(layout)
    if n > MAX_TOKENS:
        raise ValueError(f"its layout has {n:,} visual tokens; a bundle holds at most {MAX_TOKENS:,}")
    results = meta["results"]
    if set(results) != {"unpruned", *config.methods}:
        raise ValueError(f"it has results of {sorted(results)}, not of the unpruned run and its methods "
                         f"{list(config.methods)}")
    for method, facts in results.items():
        _check_result(method, facts, n, config)
    _check_stability(meta.get("stability"), results)


def _fields(value, where: str, **kinds) -> dict:
    """`value` itself, after checking it is a dict holding each key of `kinds` with a value of that kind
    (a bool is no int, a number is finite)."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} is not an object")
    for key, kind in kinds.items():
        if key not in value:
            raise ValueError(f"{where} has no {key!r}")
        if not _is(value[key], kind):
            raise ValueError(f"{where}.{key} is {type(value[key]).__name__}, not {getattr(kind, '__name__', 'a number')}")
    return value


def _is(value, kind) -> bool:
    if kind in (int, NUMBER) and isinstance(value, bool):
        return False
    if kind is NUMBER:
        try:
            return isinstance(value, NUMBER) and math.isfinite(value)
        except OverflowError:  # an integer too large for a float
            return False
    return isinstance(value, kind)


def _config(stored: dict, layers: int) -> AnalysisConfig:
    """The stored settings as an AnalysisConfig: every one present (matching a Run compares them all), valid."""
    if set(stored) != set(AnalysisConfig.__dataclass_fields__):
        raise ValueError(f"config does not hold exactly the settings {', '.join(AnalysisConfig.__dataclass_fields__)}")
    methods = stored["methods"]
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods) or len(set(methods)) != len(methods):
        raise ValueError("config.methods is not a list of distinct method names")
    try:
        return AnalysisConfig(**{**stored, "methods": tuple(methods)}).validate(layers)
    except (TypeError, ValueError) as error:  # TypeError: e.g. a list where a name belongs
        raise ValueError(f"config: {error}") from None


def _check_result(method: str, facts, n: int, config: AnalysisConfig) -> None:
    where = f"results.{method}"
    _fields(facts, where, method=str, keep_ratio=NUMBER, tokens_before=int, tokens_after=int, sequence_before=int,
            sequence_after=int, flops=NUMBER, flops_unpruned=NUMBER, selection_seconds=NUMBER, prefill_seconds=NUMBER,
            decode_seconds_per_token=NUMBER, answer=str, answer_token_ids=list)
    if facts["method"] != method:
        raise ValueError(f"{where}.method is {facts['method']!r}")
    if facts["keep_ratio"] != (1.0 if method == "unpruned" else config.keep_ratio):
        raise ValueError(f"{where}.keep_ratio {facts['keep_ratio']} is not the configured one")
    if facts["tokens_before"] != n or not (1 <= facts["tokens_after"] <= n) or (
            method == "unpruned" and facts["tokens_after"] != n):
        raise ValueError(f"{where} keeps {facts['tokens_after']} of {facts['tokens_before']} tokens; its layout has {n}")
    if facts["sequence_after"] != facts["sequence_before"] - n + facts["tokens_after"] or facts["sequence_before"] < n:
        raise ValueError(f"{where}'s sequence lengths do not match its token counts")
    if facts["flops_unpruned"] <= 0 or facts["flops"] < 0:
        raise ValueError(f"{where} has FLOPs below zero (or none unpruned)")
    if min(facts["selection_seconds"], facts["prefill_seconds"], facts["decode_seconds_per_token"]) < 0:
        raise ValueError(f"{where} has a time below zero")
    ids = facts["answer_token_ids"]
    if len(ids) > config.max_new_tokens or not all(_is(token, int) and 0 <= token <= MAX_TOKEN_ID for token in ids):
        raise ValueError(f"{where}.answer_token_ids is not a list of at most {config.max_new_tokens} token ids")
    for key in ("selection_timing", "prefill_timing"):
        samples = facts.get(key, "missing")
        if samples is not None and not (isinstance(samples, list) and samples and
                                        all(_is(s, NUMBER) and s >= 0 for s in samples)):
            raise ValueError(f"{where}.{key} is neither null nor a list of times")


def _check_stability(stability, results: dict) -> None:
    """The stored sweep: null, or keep ratios in (0, 1] and a finite curve over them per stored run."""
    if stability is None:
        return
    _fields(stability, "stability", keep_ratios=list, curves=dict)
    ratios = stability["keep_ratios"]
    if not ratios or not all(_is(r, NUMBER) and 0 < r <= 1 for r in ratios):
        raise ValueError("stability.keep_ratios is not a list of keep ratios in (0, 1]")
    curves = stability["curves"]
    for method in results:
        curve = curves.get(method)
        if not isinstance(curve, list) or len(curve) != len(ratios) or not all(_is(v, NUMBER) for v in curve):
            raise ValueError(f"stability.curves has no {len(ratios)} finite numbers for {method}")


# --------------------------------------------------------------------------------------------------- arrays


def check_arrays(meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """ValueError (the reason) unless the arrays, read to `array_specs(meta)`, hold values the views can use."""
    layout = meta["layout"]
    kind, cell = block_kinds_and_cells(layout["base_side"], layout["rows"], layout["cols"])
    if not (np.array_equal(arrays["layout/kind"], kind) and np.array_equal(arrays["layout/cell"], cell)):
        raise ValueError(f"layout/kind or layout/cell is not the packed block of a {layout['base_side']}² base view "
                         f"and a {layout['rows']}×{layout['cols']} grid")
    newline = kind == KIND_NEWLINE
    _check_boxes(arrays["layout/box"], newline, layout["image_width"], layout["image_height"])
    n, newlines = len(kind), np.flatnonzero(newline)
    for method in meta["results"]:
        kept = arrays[f"{method}/kept"]
        _check_kept(f"{method}/kept", kept, n, newlines)
        scores = arrays.get(f"{method}/scores")
        if scores is not None and (np.isinf(scores).any() or np.isnan(scores[:, ~newline]).any()):
            raise ValueError(f"{method}/scores holds an infinite score, or NaN for an image token")
        if method == "tome":
            _check_groups("tome/group_of", arrays["tome/group_of"], kept)
    _check_graph(arrays, n)
    for view in VIEW_KINDS:
        sample = arrays[f"similarity/{view}"]
        if not (np.isfinite(sample).all() and (np.abs(sample) <= 1 + SIMILARITY_ROUNDING).all()):
            raise ValueError(f"similarity/{view} holds values that are no cosine similarities")
    if "tome" in meta["results"]:
        _check_tome_by_ratio(arrays["tome_by_ratio/ratios"], arrays["tome_by_ratio/kept"],
                             arrays["tome_by_ratio/group_of"], newlines)


def _check_boxes(box: np.ndarray, newline: np.ndarray, width: int, height: int) -> None:
    pixels = box[~newline]
    inside = (np.isfinite(pixels).all() and (pixels >= 0).all() and (pixels[:, [0, 2]] <= width).all()
              and (pixels[:, [1, 3]] <= height).all() and (pixels[:, 0] <= pixels[:, 2]).all()
              and (pixels[:, 1] <= pixels[:, 3]).all())
    if not (inside and np.isnan(box[newline]).all()):
        raise ValueError(f"layout/box holds a box outside the {width}×{height} image (or one for a newline)")


def _check_kept(name: str, kept: np.ndarray, n: int, newlines: np.ndarray) -> None:
    """Kept positions: ascending without repeats, inside the block, every newline among them."""
    if len(kept) and not (kept[0] >= 0 and kept[-1] < n and (np.diff(kept) > 0).all()):
        raise ValueError(f"{name} is not ascending positions from 0 to {n - 1} without repeats")
    if not np.isin(newlines, kept).all():
        raise ValueError(f"{name} drops a newline token (every method keeps them)")


def _check_groups(name: str, group_of: np.ndarray, kept: np.ndarray) -> None:
    """ToMe's merge groups: each token in one group (−1: dropped), group i led by its kept token kept[i]."""
    if group_of.min(initial=0) < -1 or group_of.max(initial=-1) >= len(kept) or not np.array_equal(
            group_of[kept], np.arange(len(kept))):
        raise ValueError(f"{name} does not put each kept token at the head of its own group")


def _check_graph(arrays: dict[str, np.ndarray], n: int) -> None:
    """G-Prune's degrees and strongest sources (packed positions, −1 = none) with their weights in [0, 1]."""
    if "gprune/degree" not in arrays:
        return
    degree, sources, weights = (arrays[f"gprune/{key}"] for key in ("degree", "neighbors", "neighbor_weights"))
    if not (np.isfinite(degree).all() and (degree >= 0).all()):
        raise ValueError("gprune/degree holds a degree below zero or not finite")
    if sources.shape != weights.shape or sources.min(initial=-1) < -1 or sources.max(initial=-1) >= n:
        raise ValueError(f"gprune/neighbors holds positions outside -1 … {n - 1} (or is not its weights' shape)")
    if not (np.isfinite(weights).all() and (weights >= 0).all() and (weights <= 1).all()):
        raise ValueError("gprune/neighbor_weights holds weights outside [0, 1]")


def _check_tome_by_ratio(ratios: np.ndarray, kept: np.ndarray, group_of: np.ndarray, newlines: np.ndarray) -> None:
    on_grid = all(abs(r - round(r, 2)) < 1e-9 and round(r, 2) in KEEP_RATIO_GRID for r in ratios.tolist())
    if not (on_grid and (np.diff(ratios) > 0).all() and len(kept) == len(group_of) == len(ratios)):
        raise ValueError("tome_by_ratio/ratios are not ascending slider ratios, one per row of kept and group_of")
    for ratio, row_kept, row_groups in zip(ratios.tolist(), kept, group_of):
        positions = np.flatnonzero(row_kept)
        _check_kept(f"tome_by_ratio/kept at {ratio:g}", positions, len(row_kept), newlines)
        _check_groups(f"tome_by_ratio/group_of at {ratio:g}", row_groups, positions)

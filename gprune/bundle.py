"""Precomputed analyses ("bundles"): everything the explorer shows for one example, servable without a model.

A bundle is two files side by side: `NAME.json` (which model, code and configuration produced it and when;
per-method token counts, FLOPs, timings, answers and their token ids; the keep-ratio sweep) and `NAME.npz`
(per-token arrays: kept positions, scores per iteration, degrees, strongest neighbours, ToMe groups, each
view's similarity sample and ToMe's selection at every keep ratio the explorer offers). The `(n, d)` features
are not stored (megabytes per example on a 7B model). A bundle whose `bundle_version` is not
`BUNDLE_VERSION` is refused with a message instead of being misread.

A bundle is found by its key: the SHA-256 of the image file's bytes, the question and the model family.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from .analysis import Analysis, AnalysisConfig
from .files import write_atomically
from .layout import KIND_BASE, KIND_GRID, TokenLayout
from .loading import SHAPES
from .result import Precomputed, PruneResult, Selection
from .stats import pair_similarities
from .timing import Timing
from .tome import tome_select

BUNDLE_VERSION = 1
VIEW_KINDS = {"base": KIND_BASE, "grid": KIND_GRID}
# The keep ratios the explorer's slider offers (0.01 … 1 in steps of 0.01): ToMe's selection at each is stored.
KEEP_RATIO_GRID = tuple(round(0.01 * step, 2) for step in range(1, 101))
SELECTION_ARRAYS = ("kept", "scores", "degree", "neighbors", "neighbor_weights", "group_of")
LAYOUT_ARRAYS = ("kind", "cell", "box")


def image_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_family(name: str) -> str:
    """The checkpoint a model name refers to, whether a hub id or a local folder: its last path component."""
    return PurePosixPath(name.replace("\\", "/").rstrip("/")).name or name


@dataclass(frozen=True)
class BundleKey:
    image_sha256: str
    question: str
    model_family: str


def precompute_views(analysis: Analysis, ratios=KEEP_RATIO_GRID) -> Precomputed:
    """What views derive from the features, computed from them once (similarity samples, ToMe per ratio)."""
    layout = analysis.layout
    similarity = {view: pair_similarities(analysis.features, layout.positions(kind)) for view, kind in VIEW_KINDS.items()}
    tome = {}
    if "tome" in analysis.results:
        features = torch.from_numpy(analysis.features)
        for ratio in ratios:
            selection = tome_select(features, layout.rows, layout.cols, ratio, base_tokens=layout.base_tokens)
            tome[ratio] = Selection(kept_positions=selection.kept_positions, groups=selection.groups)
    return Precomputed(similarity, tome)


def write_bundle(analysis: Analysis, image_bytes: bytes, folder: Path, name: str, *, created: str, code_version: str,
                 layers: int, stability: dict | None = None, precomputed: Precomputed | None = None) -> Path:
    """Write `folder/NAME.json` and `folder/NAME.npz` for `analysis` (of the image file `image_bytes`, by a model
    with `layers` decoder layers); returns the JSON path. Each file is written whole or not at all, and the JSON
    holds the arrays' hash, so a JSON beside arrays of another write is refused when read."""
    if analysis.features is None and precomputed is None:
        raise ValueError("an analysis without features needs its precomputed views to be bundled")
    precomputed = precomputed or precompute_views(analysis)
    layout = analysis.layout
    n = layout.n_tokens
    arrays: dict[str, np.ndarray] = {}
    results = {}
    for method, result in {"unpruned": analysis.reference, **analysis.results}.items():
        results[method] = _result_meta(result)
        arrays.update({f"{method}/{key}": value for key, value in _selection_arrays(result.selection, n).items()})
    arrays.update({f"layout/{key}": getattr(layout, key) for key in LAYOUT_ARRAYS})
    for view, sample in precomputed.similarity.items():
        arrays[f"similarity/{view}"] = np.asarray(sample, dtype=np.float32)
    if precomputed.tome:
        ratios = sorted(precomputed.tome)
        arrays["tome_by_ratio/ratios"] = np.asarray(ratios, dtype=np.float64)
        arrays["tome_by_ratio/kept"] = np.stack([precomputed.tome[r].kept_mask(n) for r in ratios])
        arrays["tome_by_ratio/group_of"] = np.stack([precomputed.tome[r].group_of(n) for r in ratios]).astype(np.int16)
    meta = {
        "bundle_version": BUNDLE_VERSION,
        "created": created,
        "code_version": code_version,
        "model": {"name": analysis.model_name, "family": model_family(analysis.model_name),
                  "random_weights": analysis.random_weights, "layers": layers},
        "example": {"image_sha256": image_digest(image_bytes), "question": analysis.question,
                    "system_text": analysis.system_text},
        "config": asdict(analysis.config),
        "layout": {"image_width": layout.image_width, "image_height": layout.image_height,
                   "base_side": layout.base_side, "rows": layout.rows, "cols": layout.cols},
        "results": results,
        "stability": stability,
    }
    folder.mkdir(parents=True, exist_ok=True)
    json_path, npz_path = folder / f"{name}.json", folder / f"{name}.npz"
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    meta["arrays_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()  # pairs the two files
    write_atomically(npz_path, buffer.getvalue())
    write_atomically(json_path, (json.dumps(meta, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    return json_path


@dataclass
class Bundle:
    """A bundle read back: its metadata and arrays; `analysis(image)` rebuilds what the explorer shows."""

    path: Path
    meta: dict
    arrays: dict[str, np.ndarray]

    @property
    def key(self) -> BundleKey:
        example = self.meta["example"]
        return BundleKey(example["image_sha256"], example["question"], self.meta["model"]["family"])

    @property
    def label(self) -> str:
        """"precomputed on MODEL at DATE" for the UI."""
        kind = ("random-weight toy model " if self.meta["model"]["random_weights"]
                else "the small synthetic-shapes model " if self.meta["model"]["name"] == SHAPES else "")
        return f"precomputed on {kind}{self.meta['model']['name']} at {self.meta['created']}"

    def analysis(self, image: Image.Image) -> Analysis:
        """The stored analysis of `image` (the example's decoded picture), without features: its views come
        from `Analysis.precomputed` instead."""
        meta, layout_meta = self.meta, self.meta["layout"]
        if image.size != (layout_meta["image_width"], layout_meta["image_height"]):
            raise ValueError(f"bundle {self.path.name} was computed for a {layout_meta['image_width']}×"
                             f"{layout_meta['image_height']} image, not {image.width}×{image.height}")
        layout = TokenLayout(**layout_meta, **{key: self.arrays[f"layout/{key}"] for key in LAYOUT_ARRAYS})
        config = AnalysisConfig(**{**meta["config"], "methods": tuple(meta["config"]["methods"])})
        results = {method: self._result(method, layout.n_tokens) for method in meta["results"]}
        reference = results.pop("unpruned")
        similarity = {view: self.arrays[f"similarity/{view}"] for view in VIEW_KINDS}
        tome = {}
        if "tome_by_ratio/ratios" in self.arrays:
            table = zip(*(self.arrays[f"tome_by_ratio/{key}"] for key in ("ratios", "kept", "group_of")))
            for ratio, kept, group_of in table:
                tome[round(float(ratio), 2)] = _selection(np.flatnonzero(kept), group_of=group_of)
        return Analysis(config, meta["model"]["name"], meta["model"]["random_weights"], meta["example"]["question"],
                        image, layout, None, reference, results, system_text=meta["example"]["system_text"],
                        precomputed=Precomputed(similarity, tome), origin=self.label)

    def _result(self, method: str, n: int) -> PruneResult:
        facts = self.meta["results"][method]
        arrays = {key: self.arrays.get(f"{method}/{key}") for key in SELECTION_ARRAYS}
        selection = _selection(arrays["kept"], arrays["scores"], arrays["degree"], arrays["neighbors"],
                               arrays["neighbor_weights"], arrays["group_of"], facts["selection_seconds"])
        timing = {key: Timing(tuple(facts[key])) if facts[key] else None for key in ("selection_timing", "prefill_timing")}
        fields = {key: facts[key] for key in ("method", "keep_ratio", "tokens_before", "tokens_after", "sequence_before",
                                              "sequence_after", "flops", "flops_unpruned", "prefill_seconds",
                                              "decode_seconds_per_token", "answer", "answer_token_ids")}
        return PruneResult(selection=selection, **fields, **timing)


def read_bundle(json_path: Path) -> Bundle:
    """Read one bundle; `ValueError` (saying what to do) if it is of another version, incomplete or corrupt."""
    json_path = Path(json_path)
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"bundle {json_path.name} cannot be read ({type(error).__name__}); regenerate it") from None
    version = meta.get("bundle_version") if isinstance(meta, dict) else None
    if version != BUNDLE_VERSION:
        raise ValueError(f"bundle {json_path.name} has format version {version!r}, this code reads version "
                         f"{BUNDLE_VERSION}; regenerate it with `python -m gprune precompute`")
    npz_path = json_path.with_suffix(".npz")
    try:
        raw = npz_path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != meta.get("arrays_sha256"):
            raise ValueError("they belong to another write of this bundle")
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        reason = str(error) if isinstance(error, ValueError) and "another write" in str(error) else type(error).__name__
        raise ValueError(f"bundle {json_path.name}: its arrays ({npz_path.name}) cannot be read ({reason}); "
                         "regenerate it") from None
    expected = [f"{m}/kept" for m in meta.get("results", {})] + [f"similarity/{view}" for view in VIEW_KINDS]
    missing = [key for key in expected + [f"layout/{key}" for key in LAYOUT_ARRAYS] if key not in arrays]
    if missing:
        raise ValueError(f"bundle {json_path.name} is incomplete (missing {', '.join(missing)}); regenerate it")
    bundle = Bundle(json_path, meta, arrays)
    try:  # what matching and restoring read: present and of the right kinds
        hash(bundle.key)
        AnalysisConfig(**meta["config"])
        int(meta["model"]["layers"]), bool(meta["model"]["random_weights"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"bundle {json_path.name} has malformed metadata ({type(error).__name__}: {error}); "
                         "regenerate it") from None
    return bundle


def read_bundles(folder: Path) -> tuple[dict[BundleKey, Bundle], list[str]]:
    """Every readable bundle in `folder` by key, and one message per bundle that was refused."""
    bundles, problems = {}, []
    for path in sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []:
        try:
            bundle = read_bundle(path)
        except ValueError as error:
            problems.append(str(error))
            continue
        if bundle.key in bundles:
            problems.append(f"bundles {bundles[bundle.key].path.name} and {path.name} are for the same image, "
                            f"question and model; {path.name} is ignored")
            continue
        bundles[bundle.key] = bundle
    return bundles, problems


def _result_meta(result: PruneResult) -> dict:
    facts = result.summary()
    for key in ("selection_timing", "prefill_timing"):
        timing = getattr(result, key)
        facts[key] = list(timing.samples) if timing else None
    facts["answer_token_ids"] = list(result.answer_token_ids)
    return facts


def _selection_arrays(selection: Selection, n: int) -> dict[str, np.ndarray]:
    arrays = {"kept": np.asarray(selection.kept_positions, dtype=np.int32)}
    for key in ("scores", "degree", "neighbors", "neighbor_weights"):
        value = getattr(selection, key)
        if value is not None:
            arrays[key] = np.asarray(value)
    if selection.groups is not None:
        arrays["group_of"] = selection.group_of(n).astype(np.int32)
    return arrays


def _selection(kept, scores=None, degree=None, neighbors=None, neighbor_weights=None, group_of=None,
               seconds: float = 0.0) -> Selection:
    kept = np.asarray(kept, dtype=np.int64)
    groups = None
    if group_of is not None:
        order = np.argsort(group_of, kind="stable")
        counts = np.bincount(group_of[group_of >= 0], minlength=len(kept))
        members = order[np.count_nonzero(group_of < 0):]
        groups = [group.astype(np.int64) for group in np.split(members, np.cumsum(counts)[:-1])]
    return Selection(kept_positions=kept, scores=scores, groups=groups, degree=degree, neighbors=neighbors,
                     neighbor_weights=neighbor_weights, seconds=seconds)

"""Precomputed analyses ("bundles"): everything the explorer shows for one example, servable without a model.

A bundle is two files side by side: `NAME.json` (which model, code and configuration produced it and when;
per-method token counts, FLOPs, timings, answers and their token ids; the keep-ratio sweep) and `NAME.npz`
(per-token arrays: kept positions, scores per iteration, degrees, strongest neighbours, ToMe groups, each
view's similarity sample and ToMe's selection at every keep ratio the explorer offers). The `(n, d)` features
are not stored (megabytes per example on a 7B model). A bundle whose `bundle_version` is not
`BUNDLE_VERSION` is refused with a message instead of being misread, and so is one whose metadata or arrays are
not what this code writes (gprune/bundle_format.py checks them deeply; the arrays are read without trusting the
zip: gprune/untrusted_npz.py).

A bundle is found by its key: the SHA-256 of the image file's bytes, the question and the model family.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from .analysis import Analysis, AnalysisConfig
from .bundle_format import KEEP_RATIO_GRID, MAX_JSON_BYTES, VIEW_KINDS, array_specs, check_arrays, check_meta
from .files import write_atomically
from .layout import TokenLayout
from .loading import SHAPES
from .result import Precomputed, PruneResult, Selection
from .stats import pair_similarities
from .timing import Timing
from .tome import tome_select
from .untrusted_npz import max_file_bytes, read_npz

BUNDLE_VERSION = 1
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
    """Read one bundle; `ValueError` (saying what is wrong, naming no folder) if it is of another version,
    incomplete, corrupt or not what this code writes. Nothing is read past the sizes its layout allows."""
    json_path = Path(json_path)
    name, npz_name = json_path.name, json_path.with_suffix(".npz").name
    try:
        size = json_path.stat().st_size
        meta = None if size > MAX_JSON_BYTES else json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, RecursionError, ValueError) as error:  # RecursionError: JSON nested too deep
        raise ValueError(f"bundle {name} cannot be read ({type(error).__name__}); regenerate it") from None
    if size > MAX_JSON_BYTES:
        raise ValueError(f"bundle {name} cannot be read (over {MAX_JSON_BYTES:,} bytes); regenerate it")
    version = meta.get("bundle_version") if isinstance(meta, dict) else None
    if version != BUNDLE_VERSION:
        raise ValueError(f"bundle {name} has format version {version!r}, this code reads version "
                         f"{BUNDLE_VERSION}; regenerate it with `python -m gprune precompute`")
    try:
        check_meta(meta)
    except ValueError as error:
        raise ValueError(f"bundle {name} has malformed metadata ({error}); regenerate it") from None
    specs = array_specs(meta)
    try:
        arrays = _read_arrays(json_path.with_suffix(".npz"), meta["arrays_sha256"], specs)
        check_arrays(meta, arrays)
    except (OSError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error) as error:  # a damaged or odd zip
        raise ValueError(f"bundle {name}: its arrays ({npz_name}) cannot be read ({type(error).__name__}); "
                         "regenerate it") from None
    except ValueError as error:
        raise ValueError(f"bundle {name}: its arrays ({npz_name}) cannot be used ({error}); regenerate it") from None
    return Bundle(json_path, meta, arrays)


def _read_arrays(npz_path: Path, sha256: str, specs) -> dict[str, np.ndarray]:
    """The `.npz`'s arrays, after checking its size against what `specs` can take and its hash against the JSON's."""
    size = npz_path.stat().st_size
    if size > max_file_bytes(specs):
        raise ValueError(f"it is {size:,} bytes, more than its layout's arrays can take")
    raw = npz_path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise ValueError("they belong to another write of this bundle")
    return read_npz(raw, specs)


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

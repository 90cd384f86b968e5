"""Poisoned precomputed bundles: a valid bundle with one thing wrong is refused when it is read, with a reason
that names no folder, logged by the app, whose Run then goes live; a zip bomb is refused without being
decompressed into memory."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tracemalloc
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from gradio_client import Client, handle_file

from app_bundles import Bundles
from conftest import running_app
from gprune.bundle import precompute_views, read_bundle, write_bundle
from gprune.bundle_format import MAX_JSON_BYTES, MAX_TOKENS

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
SHIPPED = ASSETS / "precomputed"
RATIOS = (0.1, 0.25, 0.5)
BOMB_BYTES = 256 * 2**20  # what the bomb member decompresses to
BOMB_PEAK_BYTES = 64 * 2**20  # reading the whole valid bundle stays far below this


@dataclass
class Written:
    json_path: Path
    image_bytes: bytes


@pytest.fixture(scope="module")
def valid(tiny_analysis, tmp_path_factory) -> Written:
    buffer = io.BytesIO()
    tiny_analysis.image.save(buffer, "PNG")
    curves = {method: [-3.0, -4.0] for method in ("unpruned", *tiny_analysis.results)}
    path = write_bundle(tiny_analysis, buffer.getvalue(), tmp_path_factory.mktemp("valid"), "example",
                        created="2026-12-08", code_version="test", layers=4,
                        stability={"keep_ratios": [1.0, 0.5], "curves": curves},
                        precomputed=precompute_views(tiny_analysis, RATIOS))
    return Written(path, buffer.getvalue())


def contents(json_path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """A bundle's metadata and arrays, read the trusting way (it is our own file)."""
    with np.load(json_path.with_suffix(".npz"), allow_pickle=False) as data:
        return json.loads(json_path.read_text()), {key: data[key] for key in data.files}


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # pickles object arrays, as a hostile writer may
    return buffer.getvalue()


def save(folder: Path, name: str, meta: dict, raw: bytes) -> Path:
    """`folder/NAME.json` + `.npz` whose JSON holds the arrays' hash, as a writer who knows the format would."""
    (folder / f"{name}.npz").write_bytes(raw)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({**meta, "arrays_sha256": hashlib.sha256(raw).hexdigest()}))
    return path


# ------------------------------------------------------------------------------------------------ poisons


@dataclass(frozen=True)
class Poison:
    name: str
    apply: Callable[[dict, dict], None]  # changes (meta, arrays) in place
    reason: str  # what the refusal must say


def put(key: str, index, value) -> Callable[[dict, dict], None]:
    def apply(meta, arrays):
        arrays[key] = arrays[key].copy()
        arrays[key][index] = value
    return apply


def replace(key: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict, dict], None]:
    def apply(meta, arrays):
        arrays[key] = change(arrays[key])
    return apply


def drop_method(method: str) -> Callable[[dict, dict], None]:
    def apply(meta, arrays):
        del meta["results"][method]
        for key in [key for key in arrays if key.startswith(f"{method}/")]:
            del arrays[key]
    return apply


def drop_last_kept(method: str) -> Callable[[dict, dict], None]:
    """`method` keeps one token less (the block's last, a newline), its counts updated to match."""
    def apply(meta, arrays):
        arrays[f"{method}/kept"] = arrays[f"{method}/kept"][:-1]
        meta["results"][method]["tokens_after"] -= 1
        meta["results"][method]["sequence_after"] -= 1
    return apply


def edit(change: Callable[[dict], None]) -> Callable[[dict, dict], None]:
    return lambda meta, arrays: change(meta)


def n_of(arrays) -> int:
    return len(arrays["layout/kind"])


POISONS = [
    Poison("kept position out of range", lambda m, a: put("gprune/kept", -1, n_of(a) + 5)(m, a),
           "gprune/kept is not ascending positions from 0 to"),
    Poison("kept position negative", put("random/kept", 0, -3), "random/kept is not ascending positions"),
    Poison("kept unsorted", replace("l2norm/kept", lambda kept: kept[[1, 0, *range(2, len(kept))]]),
           "l2norm/kept is not ascending positions"),
    Poison("kept repeated", replace("fastv/kept", lambda kept: np.concatenate([kept[:1], kept[:-1]])),
           "fastv/kept is not ascending positions"),
    Poison("a newline dropped", drop_last_kept("l2norm"), "l2norm/kept drops a newline token"),
    Poison("no unpruned result", drop_method("unpruned"), "malformed metadata (it has results of ['fastv', 'gprune', "
           "'l2norm', 'random', 'tome'], not of the unpruned run and its methods"),
    Poison("a configured method without result", drop_method("tome"), "not of the unpruned run and its methods"),
    Poison("NaN score of an image token", put("gprune/scores", (-1, 0), np.nan),
           "gprune/scores holds an infinite score, or NaN for an image token"),
    Poison("infinite score", put("random/scores", (0, 3), np.inf), "random/scores holds an infinite score"),
    Poison("layout array shorter than the layout", replace("layout/kind", lambda kind: kind[:-1]),
           "layout/kind has shape ("),
    Poison("scores longer than the layout", replace("fastv/scores", lambda s: np.concatenate([s, s[:, :1]], axis=1)),
           "fastv/scores has shape (1, "),
    Poison("kept count other than the metadata's", edit(lambda meta: meta["results"]["gprune"].update(
        tokens_after=meta["results"]["gprune"]["tokens_after"] + 1,
        sequence_after=meta["results"]["gprune"]["sequence_after"] + 1)), "gprune/kept has shape ("),
    Poison("kept as floats", replace("gprune/kept", lambda kept: kept.astype(np.float64)),
           "gprune/kept holds <f8 values, not signed integer"),
    Poison("a pickled object array", replace("tome/group_of", lambda groups: groups.astype(object)),
           "tome/group_of holds |O values"),
    Poison("ToMe group index out of range", put("tome/group_of", 0, 10**6),
           "tome/group_of does not put each kept token at the head of its own group"),
    Poison("ToMe group led by another token", replace("tome/group_of", lambda g: np.where(g == 0, 1, g)),
           "tome/group_of does not put each kept token"),
    Poison("ToMe at a ratio the slider lacks", put("tome_by_ratio/ratios", 0, 0.123),
           "tome_by_ratio/ratios are not ascending slider ratios"),
    Poison("neighbour out of range", lambda m, a: put("gprune/neighbors", (0, 0), n_of(a))(m, a),
           "gprune/neighbors holds positions outside -1"),
    Poison("negative degree", put("gprune/degree", 5, -1.0), "gprune/degree holds a degree below zero"),
    Poison("NaN similarity", put("similarity/base", 7, np.nan), "similarity/base holds values that are no cosine"),
    Poison("cells of another layout", put("layout/cell", (0, 0), 99), "layout/kind or layout/cell is not the packed block"),
    Poison("a box outside the image", put("layout/box", (0, 2), 10**6), "layout/box holds a box outside the"),
    Poison("an unexpected member", lambda m, a: a.update(extra=np.zeros(3)),
           "it holds arrays its metadata does not call for: 'extra.npy'"),
    Poison("a missing member", lambda m, a: a.pop("gprune/degree"), "it lacks 'gprune/degree'"),
    Poison("a sweep without a method's curve", edit(lambda meta: meta["stability"]["curves"].pop("tome")),
           "stability.curves has no 2 finite numbers for tome"),
    Poison("no unpruned FLOPs", edit(lambda meta: meta["results"]["fastv"].update(flops_unpruned=0)),
           "results.fastv has FLOPs below zero (or none unpruned)"),
    Poison("a layout of a million rows", edit(lambda meta: meta["layout"].update(rows=10**6)),
           f"a bundle holds at most {MAX_TOKENS:,}"),
    Poison("invalid settings", edit(lambda meta: meta["config"].update(iterations=-1)),
           "config: iterations must be from 0 to 100"),
    Poison("a bool for a number", edit(lambda meta: meta["model"].update(layers=True)), "model.layers is bool, not int"),
    Poison("no question", edit(lambda meta: meta["example"].pop("question")), "example has no 'question'"),
    Poison("a layout field more", edit(lambda meta: meta["layout"].update(depth=3)),
           "layout is not image_width, image_height, base_side, rows, cols, each at least 1"),
    Poison("a setting missing", edit(lambda meta: meta["config"].pop("seed")), "config does not hold exactly the settings"),
    Poison("a list for a setting", edit(lambda meta: meta["config"].update(system_prompt=["llava"])), "config: "),
    Poison("an integer too large for a float", edit(lambda meta: meta["results"]["gprune"].update(flops=10**400)),
           "results.gprune.flops is int, not a number"),
]


def assert_refused_and_served_live(folder: Path, reason: str, written: Written, analysis) -> None:
    """Reading `folder/example.json` fails saying `reason` (and no folder); the app's bundles leave it out, with
    that line on the log, so a Run of its image and question finds no bundle and runs the model."""
    with pytest.raises(ValueError) as refused:
        read_bundle(folder / "example.json")
    message = str(refused.value)
    assert message.startswith("bundle example.json") and message.endswith("regenerate it"), message
    assert reason in message, message
    assert str(folder) not in message and str(folder.parent) not in message
    log = io.StringIO()
    bundles = Bundles(folder, "tiny", log=log)
    assert len(bundles) == 0 and log.getvalue() == f"precomputed examples: {message}\n"
    assert bundles.find(written.image_bytes, analysis.question, analysis.config) is None


def test_the_unpoisoned_bundle_is_read_and_served(valid, tiny_analysis, tmp_path):
    meta, arrays = contents(valid.json_path)
    save(tmp_path, "example", meta, npz_bytes(arrays))  # rewritten the way the poisoned ones are
    bundles = Bundles(tmp_path, "tiny", log=io.StringIO())
    bundle = bundles.find(valid.image_bytes, tiny_analysis.question, tiny_analysis.config)
    assert bundle is not None and bundle.analysis(tiny_analysis.image).reference.answer == tiny_analysis.reference.answer


@pytest.mark.parametrize("poison", POISONS, ids=[poison.name for poison in POISONS])
def test_a_poisoned_bundle_is_refused_and_the_run_goes_live(poison, valid, tiny_analysis, tmp_path):
    meta, arrays = contents(valid.json_path)
    poison.apply(meta, arrays)
    save(tmp_path, "example", meta, npz_bytes(arrays))
    assert_refused_and_served_live(tmp_path, poison.reason, valid, tiny_analysis)


def test_files_larger_than_their_layout_allows_are_not_read(valid, tiny_analysis, tmp_path):
    meta, arrays = contents(valid.json_path)
    save(tmp_path, "example", meta, npz_bytes(arrays) + bytes(32 * 2**20))  # trailing bytes: still a valid zip
    assert_refused_and_served_live(tmp_path, "more than its layout's arrays can take", valid, tiny_analysis)
    save(tmp_path, "example", {**meta, "code_version": "x" * MAX_JSON_BYTES}, npz_bytes(arrays))
    assert_refused_and_served_live(tmp_path, f"cannot be read (over {MAX_JSON_BYTES:,} bytes)", valid, tiny_analysis)


# ----------------------------------------------------------------------------------------------- zip bombs


def bomb_npz(arrays: dict[str, np.ndarray], key: str, size: int = BOMB_BYTES) -> bytes:
    """An .npz of `arrays` whose member `key` is its true header followed by `size` zero bytes (compressed
    about a thousand times: a small file that decompresses to far more than the layout allows)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                if name != key:
                    np.lib.format.write_array(member, array, allow_pickle=False)
                    continue
                np.lib.format.write_array_header_1_0(member, np.lib.format.header_data_from_array_1_0(array))
                chunk = bytes(2**20)
                for _ in range(size // len(chunk)):
                    member.write(chunk)
    return buffer.getvalue()


def understate(raw: bytes, member: str, declared: int) -> bytes:
    """The zip `raw` with `member`'s uncompressed size given as `declared`, in its local header and in the
    central directory (what zipfile reads)."""
    data = bytearray(raw)
    info = zipfile.ZipFile(io.BytesIO(raw)).getinfo(member)
    data[info.header_offset + 22: info.header_offset + 26] = struct.pack("<I", declared)
    end = raw.rindex(b"PK\x05\x06")
    offset = struct.unpack("<I", raw[end + 16: end + 20])[0]
    while raw[offset: offset + 4] == b"PK\x01\x02":
        name_length, extra_length, comment_length = struct.unpack("<HHH", raw[offset + 28: offset + 34])
        if raw[offset + 46: offset + 46 + name_length] == member.encode():
            data[offset + 24: offset + 28] = struct.pack("<I", declared)
        offset += 46 + name_length + extra_length + comment_length
    return bytes(data)


def peak_bytes_of(read: Callable[[], object]) -> int:
    """The most memory Python and numpy held at once while `read()` ran (it raises, as a refusal does)."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError):
            read()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_zip_bomb_is_refused_before_it_is_decompressed(valid, tiny_analysis, tmp_path, monkeypatch):
    meta, arrays = contents(valid.json_path)
    raw = bomb_npz(arrays, "similarity/grid")
    assert len(raw) < BOMB_BYTES // 100
    save(tmp_path, "example", meta, raw)
    opened = []
    original_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *args, **kwargs: opened.append(
        getattr(name, "filename", name)) or original_open(self, name, *args, **kwargs))
    assert peak_bytes_of(lambda: read_bundle(tmp_path / "example.json")) < BOMB_PEAK_BYTES
    assert "similarity/grid.npy" not in opened and opened  # the others were read; the bomb never opened
    assert_refused_and_served_live(tmp_path, f"similarity/grid declares {BOMB_BYTES // 10**6:,}", valid, tiny_analysis)


def test_a_zip_bomb_that_understates_its_size_is_read_no_further_than_its_bound(valid, tiny_analysis, tmp_path):
    meta, arrays = contents(valid.json_path)
    honest = 128 + arrays["similarity/grid"].nbytes  # the true member's size: the bound allows it
    save(tmp_path, "example", meta, understate(bomb_npz(arrays, "similarity/grid"), "similarity/grid.npy", honest))
    assert peak_bytes_of(lambda: read_bundle(tmp_path / "example.json")) < BOMB_PEAK_BYTES
    assert_refused_and_served_live(tmp_path, "cannot be read (BadZipFile)", valid, tiny_analysis)


def test_a_header_that_declares_a_huge_array_is_refused_before_it_is_allocated(valid, tiny_analysis, tmp_path):
    meta, arrays = contents(valid.json_path)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (4, 10**10)})
    raw = npz_bytes(arrays)
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as source, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as target:
        for member in source.infolist():
            target.writestr(member.filename, header.getvalue() + bytes(64) if member.filename == "gprune/scores.npy"
                            else source.read(member))
    save(tmp_path, "example", meta, buffer.getvalue())
    assert peak_bytes_of(lambda: read_bundle(tmp_path / "example.json")) < BOMB_PEAK_BYTES
    assert_refused_and_served_live(tmp_path, "gprune/scores has shape (4, 10000000000), not float of shape (4, ",
                                   valid, tiny_analysis)


# ----------------------------------------------------------------------------------------------------- app


def test_the_app_logs_poisoned_bundles_and_runs_their_examples_live(tmp_path):
    """Poisoned copies of a shipped example's bundle beside a sound one of another example: the server starts,
    says on its log why each was left out (no folder named), serves the sound one and runs the other live."""
    examples = {entry["file"]: entry["question"] for entry in json.loads((ASSETS / "examples.json").read_text())}
    folder = tmp_path / "bundles"
    folder.mkdir()
    for suffix in (".json", ".npz"):
        (folder / f"coffee{suffix}").write_bytes((SHIPPED / f"coffee{suffix}").read_bytes())
    meta, arrays = contents(SHIPPED / "chelsea.json")
    chosen = {poison.name: poison for poison in POISONS}
    for name in ("kept position out of range", "no unpruned result", "NaN score of an image token",
                 "layout array shorter than the layout"):
        poisoned_meta, poisoned_arrays = json.loads(json.dumps(meta)), dict(arrays)
        chosen[name].apply(poisoned_meta, poisoned_arrays)
        save(folder, f"chelsea-{name.replace(' ', '-')}", poisoned_meta, npz_bytes(poisoned_arrays))
    save(folder, "chelsea-bomb", meta, bomb_npz(arrays, "similarity/grid"))
    with running_app(tmp_path, {"GPRUNE_BUNDLES": str(folder)}) as app:
        client = Client(app.url, verbose=False)
        live = client.predict(handle_file(str(ASSETS / "chelsea.png")), examples["chelsea.png"], api_name="/analyze")[-1]
        stored = client.predict(handle_file(str(ASSETS / "coffee.jpg")), examples["coffee.jpg"], api_name="/analyze")[-1]
        log = app.log()
    assert "origin" not in live and live["results"]["gprune"]["answer"] is not None
    assert stored["origin"].startswith("precomputed on random-weight toy model tiny")
    refusals = [line for line in log.splitlines() if line.startswith("precomputed examples: bundle chelsea-")]
    assert len(refusals) == 5 and not any(str(tmp_path) in line for line in refusals), refusals
    assert any("chelsea-bomb.json" in line and "similarity/grid declares" in line for line in refusals)

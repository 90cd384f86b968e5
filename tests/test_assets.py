"""Checks on the example images in assets/: listed, loadable, attributed, checksummed."""

import hashlib
import json
import re
from pathlib import Path

import pytest
from PIL import Image

ASSETS = Path(__file__).resolve().parent.parent / "assets"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
SHA_RE = re.compile(r"`?([0-9a-f]{64})`?")


def _examples(listing: str = "examples.json") -> list[dict]:
    return json.loads((ASSETS / listing).read_text(encoding="utf-8"))


def _attribution_checksums() -> dict[str, str]:
    """Map file name -> SHA-256 from the Markdown table in ATTRIBUTION.md."""
    table: dict[str, str] = {}
    for line in (ASSETS / "ATTRIBUTION.md").read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        sha = SHA_RE.fullmatch(cells[-1]) if cells else None
        if sha is None:
            continue  # header or separator row
        name = cells[0].strip("`")
        assert name not in table, f"{name} listed twice in ATTRIBUTION.md"
        table[name] = sha.group(1)
    return table


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


PHOTO_EXAMPLES = _examples()
SHAPES_EXAMPLES = _examples("examples-shapes.json")  # shown first when the server runs the `shapes` model
EXAMPLES = PHOTO_EXAMPLES + SHAPES_EXAMPLES
CHECKSUMS = _attribution_checksums()


def test_examples_json_shape():
    assert isinstance(PHOTO_EXAMPLES, list) and len(PHOTO_EXAMPLES) >= 6 and len(SHAPES_EXAMPLES) >= 5
    files = [e["file"] for e in EXAMPLES]
    assert len(files) == len(set(files)), "duplicate files in examples.json"
    for e in EXAMPLES:
        assert set(e) >= {"file", "question"}
        assert isinstance(e["question"], str) and e["question"].strip().endswith("?")
        assert "/" not in e["file"] and "\\" not in e["file"]


@pytest.mark.parametrize("entry", EXAMPLES, ids=[e["file"] for e in EXAMPLES])
def test_example_image_is_valid(entry):
    path = ASSETS / entry["file"]
    assert path.is_file(), f"missing {path}"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    assert rgb.mode == "RGB"
    assert min(rgb.size) >= 64, f"{entry['file']} is only {rgb.size}"
    assert path.stat().st_size <= 400 * 1024, f"{entry['file']} is over 400 KB"


@pytest.mark.parametrize("entry", EXAMPLES, ids=[e["file"] for e in EXAMPLES])
def test_example_checksum_matches_attribution(entry):
    name = entry["file"]
    assert name in CHECKSUMS, f"{name} has no row in ATTRIBUTION.md"
    assert _sha256(ASSETS / name) == CHECKSUMS[name]


def test_every_asset_image_is_attributed():
    images = sorted(p.name for p in ASSETS.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    assert images, "no images in assets/"
    missing = [n for n in images if n not in CHECKSUMS]
    assert not missing, f"images without an ATTRIBUTION.md row: {missing}"
    for name in images:
        assert _sha256(ASSETS / name) == CHECKSUMS[name], f"checksum mismatch for {name}"


def test_attribution_rows_point_at_real_files():
    stale = [n for n in CHECKSUMS if not (ASSETS / n).is_file()]
    assert not stale, f"ATTRIBUTION.md lists files that do not exist: {stale}"


def test_receipt_script_renders_same_size(tmp_path):
    """The generator runs and yields an 800x600 RGB image (bytes may differ across builds)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_text_image", ASSETS / "make_text_image.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    img = mod.render()
    assert img.size == (800, 600) and img.mode == "RGB"
    assert str(mod.TOTAL) == "22.19"

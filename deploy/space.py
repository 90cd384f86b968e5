"""Assemble the Hugging Face Space repository: `python -m deploy.space OUT_DIR`, then push OUT_DIR to the Space.

The Space installs OUT_DIR/requirements.txt. It is this repository's requirements.txt with one change: torch
is pinned to a version ZeroGPU supports, because the local pin (2.13.0, CPU wheels for development and CI) is
newer than ZeroGPU's list, and ZeroGPU refuses to build with a torch it does not provide. The Python version
comes from README.md's front matter, which must name one ZeroGPU supports.

ZeroGPU's supported versions, from the Hub documentation (huggingface/hub-docs docs/hub/spaces-zerogpu.md,
commit 34ee0f0 of 2026-07-21): PyTorch 2.8.0, 2.9.1, 2.10.0, 2.11.0; Python 3.12.12 and 3.10.13.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZEROGPU_TORCH = ("2.8.0", "2.9.1", "2.10.0", "2.11.0")
ZEROGPU_PYTHON = ("3.12.12", "3.10.13")
SPACE_TORCH = "2.11.0"  # the newest ZeroGPU lists
# What app.py needs at run time (every top-level app*.py module it is split into); tests, benchmarks and CI
# files stay out of the Space.
SPACE_FILE_PATTERNS = ("app*.py", "zerogpu.py", "README.md")
SPACE_FOLDERS = ("gprune", "viz", "assets")


def space_requirements(requirements: str) -> str:
    """`requirements` with its `torch==…` pin replaced by `SPACE_TORCH`."""
    pinned, count = re.subn(r"^torch==\S+$", f"torch=={SPACE_TORCH}", requirements, flags=re.MULTILINE)
    if count != 1:
        raise ValueError(f"requirements.txt must pin torch exactly once (torch==X), found {count} pins")
    return pinned


def front_matter(readme: str) -> dict[str, str]:
    """The `key: value` lines of README.md's YAML front matter (quotes removed; lists are not needed here)."""
    match = re.match(r"---\n(.*?)\n---\n", readme, flags=re.DOTALL)
    if not match:
        raise ValueError("README.md must start with the Space's front matter between --- lines")
    pairs = (line.split(":", 1) for line in match.group(1).splitlines() if ":" in line and not line.startswith(" "))
    return {key.strip(): value.strip().strip('"') for key, value in pairs}


def build_space(out: Path) -> Path:
    """Copy the app's files into `out` (replaced if it exists) with the Space's requirements.txt."""
    python = front_matter((ROOT / "README.md").read_text()).get("python_version")
    if python not in ZEROGPU_PYTHON:
        raise ValueError(f"README.md's python_version is {python!r}; ZeroGPU supports {', '.join(ZEROGPU_PYTHON)}")
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for path in sorted({path for pattern in SPACE_FILE_PATTERNS for path in ROOT.glob(pattern)}):
        shutil.copy2(path, out / path.name)
    for name in SPACE_FOLDERS:
        shutil.copytree(ROOT / name, out / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (out / "requirements.txt").write_text(space_requirements((ROOT / "requirements.txt").read_text()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.space", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the Space repository into (replaced)")
    try:
        out = build_space(parser.parse_args(argv).out)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote the Space to {out}; push it with `hf upload SPACE_ID {out} . --repo-type space` (or git)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

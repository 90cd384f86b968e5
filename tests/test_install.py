"""The library as a user installs it: the wheel built from pyproject.toml, installed into a fresh venv.

Offline: the wheel is built with the running environment's setuptools (no build isolation, no index), and the
fresh venv sees the dependencies through a `.pth` line naming this environment's site-packages, after its own.
The repository itself is never on the fresh interpreter's path, so what runs is what the wheel installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import synthetic_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of what it packages (the build writes build/ and *.egg-info/ beside it)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("gprune", "viz"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "-w", str(out), str(source)], check=True)
    (built,) = out.glob("gprune-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new venv (no pip of its own) with the wheel installed by this environment's pip; returns its bin/."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=False)
    python = root / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True)
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    dependencies = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "dependencies.pth").write_text("\n".join(sorted(dependencies)) + "\n")
    return root / "bin"


def run_fresh(bin_dir: Path, *command: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(cwd), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(bin_dir / command[0]), *command[1:]], cwd=cwd, env=environment, capture_output=True,
                          text=True)


def test_the_wheel_holds_the_library_and_its_commands_not_the_app(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"gprune", "viz", wheel.name.removesuffix("-py3-none-any.whl") + ".dist-info"}
    assert "gprune/evaluate/metric.py" in names and "viz/overlay.py" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "gprune = gprune.__main__:main" in entry_points
    assert "gprune-evaluate = gprune.evaluate.__main__:main" in entry_points
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requirements = {line.split(": ", 1)[1].split(">")[0].split("<")[0].split("=")[0].lower()
                    for line in metadata.splitlines() if line.startswith("Requires-Dist: ")}
    pinned = {line.split("==")[0].lower() for line in (REPO / "requirements.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    assert requirements == pinned - {"gradio", "spaces"}  # the app's two; the library uses neither


def test_the_installed_library_imports_and_runs_its_commands_outside_the_repository(fresh_venv, tmp_path):
    imported = run_fresh(fresh_venv, "python", "-c",
                         "import gprune, viz, gprune.evaluate; print(gprune.__file__); print(viz.__file__); "
                         "print(gprune.gprune_scores.__module__, sorted(gprune.__all__) == sorted(set(gprune.__all__)))",
                         cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    gprune_file, viz_file, last = imported.stdout.splitlines()
    assert gprune_file.startswith(str(fresh_venv.parent)) and viz_file.startswith(str(fresh_venv.parent))
    assert last == "gprune.graph True"

    synthetic_image(96, 64).save(tmp_path / "image.png")
    analysed = run_fresh(fresh_venv, "gprune", "image.png", "What is shown?", "--model", "tiny", "--methods",
                         "gprune,l2norm", "--keep-ratio", "0.25", "--max-new-tokens", "2", "--out", "out", cwd=tmp_path)
    assert analysed.returncode == 0, analysed.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["results"]) == {"gprune", "l2norm"}

    refused = run_fresh(fresh_venv, "gprune-evaluate", "--model", "tiny", "--dataset", "no-such-folder",
                        "--keep-ratios", "2", "--out", "run", cwd=tmp_path)
    assert refused.returncode == 2 and "--keep-ratios must be comma-separated numbers" in refused.stderr

"""`import gprune` loads no submodule; the pure methods load torch and nothing of the model plumbing."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import gprune
import gprune.evaluate

ROOT = Path(__file__).resolve().parents[1]
PLUMBING = ("transformers", "gradio", "datasets", "accelerate", "pyarrow", "cv2", "matplotlib")


def modules_after(statement: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after `statement` (run from the repository root)."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("statement", ["import gprune", "import gprune.evaluate", "import gprune, gprune.evaluate; "
                                       "gprune.__all__; dir(gprune); gprune.evaluate.__all__"])
def test_importing_the_packages_loads_neither_torch_nor_the_plumbing(statement):
    loaded = modules_after(statement)
    assert "gprune" in loaded and not loaded & {"torch", "numpy", *PLUMBING}


@pytest.mark.parametrize("statement", [
    "from gprune import gprune_scores",
    "from gprune import gprune_keep, gprune_select, tome_select, l2norm_select, random_select, token_budget, Selection",
    "from gprune.evaluate import vqa_accuracy, normalize_answer",
])
def test_the_pure_functions_load_no_model_plumbing(statement):
    loaded = modules_after(statement)
    assert not loaded & set(PLUMBING)


def test_the_model_plumbing_loads_transformers_when_asked_for():
    assert "transformers" in modules_after("from gprune import patch")


@pytest.mark.parametrize("package", [gprune, gprune.evaluate])
def test_every_public_name_resolves_to_its_submodules_object(package):
    assert len(package.__all__) == len(set(package.__all__)) and set(package.__all__) <= set(dir(package))
    for name in package.__all__:
        module = importlib.import_module(package.EXPORTS[name], package.__name__)
        assert getattr(package, name) is getattr(module, name), name
    namespace: dict = {}
    exec(f"from {package.__name__} import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(package.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        package.no_such_name  # noqa: B018


def test_a_submodule_named_like_its_function_does_not_shadow_it():
    """`gprune.patch` is the function even when `gprune/patch.py` was imported first (as before the lazy import)."""
    code = ("from gprune.patch import is_patched\nimport gprune.patch\nimport gprune\nfrom gprune import patch\n"
            "print(callable(patch), gprune.patch is patch, type(patch).__name__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True", "function"]

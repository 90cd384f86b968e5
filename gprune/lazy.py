"""Packages whose public names are imported on first use, so that `import gprune` costs almost nothing.

`from gprune import gprune_scores` then imports `gprune.graph` (torch) and nothing else: not transformers,
datasets or the model plumbing, which only the names that need them pull in.
"""

from __future__ import annotations

import importlib
import sys
import types


class LazyPackage(types.ModuleType):
    """A package module that resolves `EXPORTS` names (name → submodule) on first access (PEP 562).

    Importing a submodule makes Python set it as an attribute of its package; a name exported from a submodule
    of the same name (`gprune.patch`, the function in `gprune/patch.py`) must stay the function, as it was when
    the package imported everything up front, so that attribute is not set."""

    def __getattr__(self, name: str):
        exports = self.__dict__.get("EXPORTS", {})
        if name not in exports:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], self.__name__), name)
        self.__dict__[name] = value  # later lookups are plain attribute reads
        return value

    def __setattr__(self, name: str, value) -> None:
        exported_from = self.__dict__.get("EXPORTS", {}).get(name)
        if isinstance(value, types.ModuleType) and exported_from == f".{name}":
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.__dict__.get("EXPORTS", {})))


def make_lazy(package: str) -> None:
    """Turn the already-executing package module `package` (its `__init__` defines `EXPORTS`) into a LazyPackage."""
    sys.modules[package].__class__ = LazyPackage

"""Precomputed examples in the app: bundles (`python -m gprune precompute`) served for a Run whose image bytes,
question, model family and settings match one, with no model call and no GPU lease.

The folder is `assets/precomputed/` or `GPRUNE_BUNDLES` (set by the operator, never by a client). Bundles of
another model family, of another format version, that cannot be read or that are not what this code writes
(`gprune.bundle.read_bundle` checks them deeply, within size bounds) are left out, each with one line on the
server's log saying why and naming no folder; a Run of their example then runs the model.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, replace
from pathlib import Path

from PIL import Image

from gprune import Analysis, AnalysisConfig
from gprune.bundle import Bundle, BundleKey, image_digest, read_bundles

# Settings that do not change what a bundle shows: timings are shown when the bundle has them (measured when it
# was made), and a subset of its methods is served from it.
IGNORED_SETTINGS = ("timing_rounds", "methods")


class Bundles:
    """The bundles one server serves: those of its model family (`family`), read once at start-up.

    With a model loaded, its depth and whether its weights are random must be the bundle's too: a fine-tune or
    a look-alike folder of the same name is another model."""

    def __init__(self, folder: Path, family: str, *, layers: int | None = None, random_weights: bool | None = None,
                 log=sys.stderr):
        found, problems = read_bundles(folder)
        self.family = family
        self.by_key: dict[BundleKey, Bundle] = {}
        for key, bundle in found.items():
            model = bundle.meta["model"]
            if key.model_family != family:
                problems.append(f"bundle {bundle.path.name} was computed on {key.model_family!r}, this server runs "
                                f"{family!r}: ignored")
            elif (layers, random_weights) != (None, None) and (model["layers"], model["random_weights"]) != (
                    layers, random_weights):
                problems.append(f"bundle {bundle.path.name} was computed on a {model['layers']}-layer model with "
                                f"{'random' if model['random_weights'] else 'trained'} weights, not this server's: ignored")
            else:
                self.by_key[key] = bundle
        for problem in problems:
            print(f"precomputed examples: {problem}", file=log)

    def __len__(self) -> int:
        return len(self.by_key)

    def layers(self) -> int | None:
        """The decoder depth of the model the bundles were computed on (for FastV's K without a model)."""
        return next((bundle.meta["model"]["layers"] for bundle in self.by_key.values()), None)

    def find(self, image_bytes: bytes, question: str, config: AnalysisConfig) -> Bundle | None:
        """The bundle of this image file and question whose settings are `config`'s (methods: a subset)."""
        bundle = self.by_key.get(BundleKey(image_digest(image_bytes), question, self.family))
        if bundle is None:
            return None
        stored = bundle.meta["config"]
        wanted = asdict(config)
        if any(stored[key] != wanted[key] for key in wanted if key not in IGNORED_SETTINGS):
            return None
        return bundle if set(config.methods) <= set(stored["methods"]) else None

    def analysis(self, bundle: Bundle, picture: Image.Image, config: AnalysisConfig) -> Analysis:
        """The bundle's analysis of `picture` with only the methods `config` asks for, in its order."""
        analysis = bundle.analysis(picture)
        analysis.results = {method: analysis.results[method] for method in config.methods}
        analysis.config = replace(analysis.config, methods=config.methods)
        return analysis

"""This process's private folders, made at start-up before Gradio is imported (Gradio reads where its folder is
from the environment, partly at import). Standard library only, for that reason."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path


def private_folders() -> Path:
    """Make the folders now; return the one for the sessions' downloads.

    Fixed names under the shared temp folder (`$TMPDIR/gprune-explorer`, Gradio's default `$TMPDIR/gradio`)
    can be planted beforehand by another local user, e.g. as a symlink to a folder of theirs; a folder made
    by `mkdtemp` (new, random name, mode 0700) cannot. Gradio's upload and cache folder is one unless
    `GRADIO_TEMP_DIR` names another; the downloads folder goes inside it, so Gradio serves those files where
    they are instead of copying them. Both are removed at exit.
    """
    if not os.environ.get("GRADIO_TEMP_DIR"):
        os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="gprune-explorer-")
        atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], True)
    cache = Path(os.environ["GRADIO_TEMP_DIR"])
    cache.mkdir(parents=True, exist_ok=True)
    downloads = Path(tempfile.mkdtemp(prefix="gprune-downloads-", dir=cache)).resolve()
    atexit.register(shutil.rmtree, downloads, True)
    return downloads

"""How the app writes files: each session's downloads built once per run and removed with the session, and
Gradio's shared picture cache written so that no reader sees a partial file. (Where: `app_folders`.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

from gradio import processing_utils

from gprune.files import write_atomically


class SessionFiles:
    """One session's downloads, in a folder of its own: one file per slot (the ZIP; a GIF per view), built once
    per run and display setting and reused; a file built for another setting replaces its slot's old one.

    The folder (random name, made at the first download) goes when this object does, i.e. when the session's
    results are dropped — a new run, the TTL, the session cap — so one session never holds more than one file
    per slot on disk. The lock makes concurrent calls of one session build each file once (and one at a time).
    """

    def __init__(self, root: Path):
        self._root = root
        self._folder: Path | None = None
        self._slots: dict[str, str] = {}  # slot → the name of the file in it
        self._lock = threading.Lock()

    def built(self, slot: str, name: str, build: Callable[[], bytes]) -> str:
        """The path of `name` in `slot`, built by `build()` unless this run built it already."""
        with self._lock:
            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(dir=self._root))
                weakref.finalize(self, shutil.rmtree, self._folder, True)
            previous = self._slots.get(slot)
            if previous is not None and previous != name:
                (self._folder / previous).unlink(missing_ok=True)
            self._slots[slot] = name
            path = self._folder / name
            if not path.is_file():  # first call for this setting, or Gradio's hourly clean-up removed it
                write_atomically(path, build())
            return str(path)

    def discard(self, name: str) -> None:
        """Forget `name` (its content changed); a download already under way still gets the old file."""
        with self._lock:
            if self._folder is not None:
                (self._folder / name).unlink(missing_ok=True)


def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """Gradio's `processing_utils.save_pil_to_cache`, writing each cache file once and atomically.

    Gradio names a picture it serves by the hash of its bytes (`<cache>/<sha256>/image.jpeg`), so sessions that
    show the same picture share one file, and Gradio rewrote it in place for each: a download racing the
    rewrite got an empty or truncated file. Same name means same bytes, so an existing file is only touched
    (Gradio's clean-up ages files by ctime); a new one is renamed into place complete.
    """
    data = processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    path = (folder / f"{name}.{format}").resolve()
    try:
        os.utime(path)
    except FileNotFoundError:
        write_atomically(path, data)
    return str(path)


def write_gradio_cache_atomically() -> None:
    """Install `save_pil_to_cache` in Gradio (every component looks it up in `processing_utils` when called)."""
    processing_utils.save_pil_to_cache = save_pil_to_cache

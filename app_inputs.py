"""The app's input components and checks: every value a client sends is checked here, and a bad one is
refused with a `gr.Error` that says what is wrong (never a server path or an exception's text).

The components are `gr.Image`, `gr.Slider` and `gr.CheckboxGroup` with their own `preprocess`, because the
raw API reaches `preprocess` with whatever JSON a client sends, not only what the browser would.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from gradio import component_meta
from gradio.utils import get_upload_folder

from gprune import METHODS
from gprune.images import UNDECODABLE

UNUSABLE = "That upload cannot be used: "
# One message for every file that was not uploaded to this app, whether or not it exists (nothing to probe).
NOT_AN_UPLOAD = (UNUSABLE + "only files uploaded to this app (or its examples) can be analysed; upload the image "
                 "file through the app and send the path the upload returns.")
MAX_QUESTION_CHARS = 500


def shown(value, limit: int = 40) -> str:
    """`repr(value)` cut to `limit` characters: messages quote what was sent without echoing megabytes."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 12]}… ({len(text):,} characters)"


@contextlib.contextmanager
def no_stub_files():
    """Gradio writes a `.pyi` stub next to the source of every Component subclass; don't litter the app folder."""
    original = getattr(component_meta, "create_or_modify_pyi", None)
    if original is not None:
        component_meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        if original is not None:
            component_meta.create_or_modify_pyi = original


@dataclass(frozen=True)
class Upload:
    """An uploaded image as the handlers get it: the file's bytes and the name the client gave it."""

    data: bytes
    name: str


def uploaded_file(path) -> Path:
    """`path` resolved (symlinks, `..`) if it is a file Gradio received as an upload (or cached as an example):
    inside its upload and cache folder. Anything else, existing or not, gets `NOT_AN_UPLOAD`."""
    try:
        resolved = Path(path).resolve(strict=True)
        if resolved.is_relative_to(Path(get_upload_folder()).resolve()) and resolved.is_file():
            return resolved
    except (OSError, ValueError, TypeError):  # missing, unreadable, or not a path at all (a NUL byte, a number)
        pass
    raise gr.Error(NOT_AN_UPLOAD)


def data_url_bytes(url: str) -> bytes:
    try:
        return base64.b64decode(url.split(",", 1)[1], validate=True)
    except (IndexError, binascii.Error):
        raise gr.Error(f"{UNUSABLE}the data URL is not valid base64, so its data {UNDECODABLE}.") from None


with no_stub_files():

    class ImageUpload(gr.Image):
        """`gr.Image` (same front end) that hands the handler an `Upload` (the file's bytes), for `gprune.images`.

        Gradio's own preprocessing opens the file with PIL (any of its formats) and, for a payload without
        `meta` (which Gradio does not treat as a file), returns whatever path the client wrote; here only an
        upload's bytes (or a `data:` URL's) get through, and `load_image` says exactly what is wrong with them.
        A subclass (not a patched instance) so that Gradio's per-session copies of the component, e.g. after an
        example click, keep it.
        """

        is_template = True  # same Svelte component as gr.Image

        def preprocess(self, payload):
            if payload is None or (payload.path is None and payload.url is None):
                return None
            name = payload.orig_name or "image"  # client-chosen: only ever used, sanitised, in download names
            if payload.url and payload.url.startswith("data:"):
                return Upload(data_url_bytes(payload.url), name)
            try:  # read here, so that no path, and no message about one, reaches the decoder
                return Upload(uploaded_file(payload.path).read_bytes(), name)
            except OSError:
                raise gr.Error(NOT_AN_UPLOAD) from None

    class Setting(gr.Slider):
        """`gr.Slider` that names itself when an API call sends a value it cannot take.

        Gradio's own check says "Value 0 is less than minimum value 0.01" without saying which setting, lets
        NaN through, and fails with an unexplained server error on a missing value, a string or an integer
        too large for a float.
        """

        is_template = True  # same Svelte component as gr.Slider

        def preprocess(self, payload):
            whole = all(float(v).is_integer() for v in (self.minimum, self.step))
            if not in_range(payload, self.minimum, self.maximum, whole):
                raise gr.Error(f"{self.label} must be a {'whole ' if whole else ''}number from {self.minimum:g} to "
                               f"{self.maximum:g}; got {shown(payload)}.")
            return super().preprocess(payload)

    class MethodChoice(gr.CheckboxGroup):
        """`gr.CheckboxGroup` of method names that accepts one name as a string and names unknown methods."""

        is_template = True  # same Svelte component as gr.CheckboxGroup

        def preprocess(self, payload):
            if isinstance(payload, str):
                payload = [payload]
            if not isinstance(payload, list) or not all(isinstance(m, str) for m in payload):
                raise gr.Error(f"methods must be a list of method names from {', '.join(METHODS)}; "
                               f"got {shown(payload)}.")
            unknown = [m for m in payload if m not in METHODS]
            if unknown:
                raise gr.Error(f"Unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(shown, unknown))}: "
                               f"methods must be a non-empty subset of {', '.join(METHODS)}.")
            return super().preprocess(payload)


    class RawNumber(gr.Number):
        """`gr.Number` that hands the handler the JSON value as sent (Gradio's turns `true` into 1.0 and 1.7 into a
        float without a word), for handlers that check it themselves."""

        is_template = True  # same Svelte component as gr.Number

        def preprocess(self, payload):
            return payload


def in_range(value, low: float, high: float, whole: bool) -> bool:
    """`value` is a real number (not a bool) in [low, high], and whole if `whole`; any JSON value is safe here."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    # int vs float comparisons are exact in Python (no conversion), so a 400-digit integer is just out of range.
    return low <= value <= high and (not whole or float(value).is_integer())


def read_question(question) -> str:
    if not isinstance(question, str) or not question.strip():
        raise gr.Error("Type a question about the image, e.g. “What is in the image?”.")
    question = question.strip()
    if len(question) > MAX_QUESTION_CHARS:
        raise gr.Error(f"The question is {len(question)} characters long; shorten it to at most {MAX_QUESTION_CHARS}.")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as error:  # JSON can carry an unpaired UTF-16 surrogate ("\ud800"); no text has one
        raise gr.Error(f"The question has an invalid character at position {error.start + 1} (an unpaired "
                       "surrogate, which is not text); retype it.") from None
    return question


def pixel_coordinates(x, y) -> tuple[float, float]:
    try:
        point = float(x), float(y)
    except (TypeError, ValueError, OverflowError):
        point = (math.nan, math.nan)
    if not all(math.isfinite(v) for v in point):
        raise gr.Error("Give the pixel coordinates x and y of the token to inspect as numbers (or click the "
                       f"picture); got x={shown(x)}, y={shown(y)}.")
    return point

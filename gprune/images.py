"""Turn whatever the user gives (path, bytes, PIL image, numpy array) into a sane 8-bit RGB PIL image.

Every failure is a `ValueError` whose message can be shown to the user as is.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
MIN_SIDE = 2
UNDECODABLE = "could not be decoded as an image; upload a PNG, JPEG, WebP, GIF, BMP or TIFF"
WHITE = (255, 255, 255, 255)

ImageSource = str | Path | bytes | bytearray | memoryview | Image.Image | np.ndarray


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Return `source` as an RGB image, EXIF orientation applied.

    Accepts a file path, encoded bytes, a PIL image or a `(H, W)` / `(H, W, 3)` / `(H, W, 4)` uint8 array.
    Grayscale, palette, CMYK and 16-bit images are converted to 8-bit RGB; transparency is composited on
    white; animations give their first frame. The size is checked against `max_pixels` from the header,
    before any pixel data is decoded.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < MIN_SIDE * MIN_SIDE:
        raise ValueError(f"max_pixels must be a whole number >= {MIN_SIDE * MIN_SIDE}, got {max_pixels!r}")
    if isinstance(source, np.ndarray):
        image = _from_array(source)
        _check_size(image.size, max_pixels)
        return _to_rgb(image)
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels)
        return _decode(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _open(io.BytesIO(bytes(source)), max_pixels)
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ValueError(f"no image file at {str(path)!r}")
        return _open(path, max_pixels)
    raise ValueError(
        f"image must be a file path, bytes, a PIL image or a uint8 numpy array, got {type(source).__name__}"
    )


def fit_image(image: Image.Image, max_side: int = 1344) -> Image.Image:
    """Downsize (aspect kept, Lanczos) so the longer side is at most `max_side`; otherwise return `image` itself."""
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < MIN_SIDE:
        raise ValueError(f"max_side must be a whole number >= {MIN_SIDE}, got {max_side!r}")
    width, height = image.size
    if max(width, height) <= max_side:
        return image
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _open(file: io.BytesIO | Path, max_pixels: int) -> Image.Image:
    # Pillow's own bomb guard fires in `open` (error) or as a warning; both become errors here.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(file) as image:
                _check_size(image.size, max_pixels)  # header only: nothing decoded yet
                return _decode(image)
        except UnidentifiedImageError as error:
            raise ValueError(f"the file {UNDECODABLE}") from error
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ValueError(f"image rejected as a possible decompression bomb ({error})") from error
        except (OSError, SyntaxError, EOFError) as error:  # a header Pillow recognised but could not read
            raise ValueError(_corrupt_message(error)) from error


def _decode(image: Image.Image) -> Image.Image:
    try:
        image.load()
        oriented = ImageOps.exif_transpose(image)
        return _to_rgb(oriented)
    except (OSError, SyntaxError, EOFError, ValueError) as error:
        raise ValueError(_corrupt_message(error)) from error


def _corrupt_message(error: BaseException) -> str:
    return f"the image is truncated or corrupt and {UNDECODABLE} ({error})"


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ValueError(f"image is {width}×{height} pixels: degenerate, need at least {MIN_SIDE}×{MIN_SIDE}")
    if width * height > max_pixels:
        raise ValueError(
            f"image is {width}×{height} = {width * height:,} pixels, more than the limit of {max_pixels:,}; "
            "downscale it first"
        )


def _from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return Image.fromarray(np.ascontiguousarray(array))  # uint8 → L, RGB or RGBA by shape
    raise ValueError(f"image arrays must have shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    return image.convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer images as 16-bit data (0..65535 → 0..255); float images stretched min..max."""
    values = np.nan_to_num(np.asarray(image).astype(np.float64))
    if image.mode == "F":
        low, high = float(values.min()), float(values.max())
        values = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    else:
        values = np.clip(values, 0, 65535) / 257.0  # 65535 / 255 = 257 exactly
    return Image.fromarray(np.round(values).astype(np.uint8))

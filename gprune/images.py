"""Turn whatever the user gives (path, bytes, PIL image, numpy array) into a sane 8-bit RGB PIL image.

Every failure is a `ValueError` whose message can be shown to the user as is. Files are opened only as one of
the formats in `FORMATS`, and their size is checked from the header before any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageMode, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
MODEL_MAX_SIDE = 1344  # larger images are downscaled for the model (LLaVA-NeXT's largest tile canvas is 1008)
DEFAULT_MAX_BYTES = 4 * DEFAULT_MAX_PIXELS
MIN_SIDE = 2
# Pillow opens dozens of formats (PSD, EPS through Ghostscript, DDS, QOI, …), each a parser exposed to the
# network; only the ones the messages promise are ever tried.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
UNDECODABLE = "could not be decoded as an image; upload a PNG, JPEG, WebP, GIF, BMP or TIFF"
WHITE = (255, 255, 255)
EXIF_ORIENTATION = 0x0112
# EXIF orientation value → the transposition that shows the picture upright (1, or absent: as stored).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
STRIP_PIXELS = 1 << 20  # high-bit-depth images are converted this many pixels at a time

ImageSource = str | Path | bytes | bytearray | memoryview | Image.Image | np.ndarray


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES) -> Image.Image:
    """Return `source` as an RGB image, EXIF orientation applied.

    Accepts a file path, encoded bytes, a PIL image or a `(H, W)` / `(H, W, 3)` / `(H, W, 4)` uint8 array.
    Grayscale, palette, CMYK and 16-bit images are converted to 8-bit RGB; transparency is composited on
    white; animations give their first frame. The pixel count (`max_pixels`) and the memory the decoded
    pixels take (`max_bytes`, as Pillow stores them: 1 byte per pixel for grey or palette, 2 for 16-bit
    grey, 4 for colour or 32-bit) are checked from the header, before any pixel data is decoded.
    """
    for name, limit in (("max_pixels", max_pixels), ("max_bytes", max_bytes)):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < MIN_SIDE * MIN_SIDE:
            raise ValueError(f"{name} must be a whole number >= {MIN_SIDE * MIN_SIDE}, got {limit!r}")
    if isinstance(source, np.ndarray):
        image = _from_array(source)
        _check_size(image, max_pixels, max_bytes)
        return _to_rgb(image)
    if isinstance(source, Image.Image):
        _check_size(source, max_pixels, max_bytes)
        return _decode(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _open(io.BytesIO(bytes(source)), max_pixels, max_bytes)
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ValueError(f"no image file at {str(path)!r}")
        return _open(path, max_pixels, max_bytes)
    raise ValueError(
        f"image must be a file path, bytes, a PIL image or a uint8 numpy array, got {type(source).__name__}"
    )


def fit_image(image: Image.Image, max_side: int = MODEL_MAX_SIDE) -> Image.Image:
    """Downsize (aspect kept, Lanczos) so the longer side is at most `max_side`; otherwise return `image` itself."""
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < MIN_SIDE:
        raise ValueError(f"max_side must be a whole number >= {MIN_SIDE}, got {max_side!r}")
    width, height = image.size
    if max(width, height) <= max_side:
        return image
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def decoded_bytes(mode: str, size: tuple[int, int]) -> int:
    """Memory Pillow takes for the decoded pixels: one byte per pixel for 8-bit single-band modes, the sample
    size for 16/32-bit ones, and 4 bytes for every multi-band mode (RGB is stored padded to 4)."""
    descriptor = ImageMode.getmode(mode)
    per_pixel = int(descriptor.typestr[-1]) if len(descriptor.bands) == 1 else 4
    return size[0] * size[1] * per_pixel


def _open(file: io.BytesIO | Path, max_pixels: int, max_bytes: int) -> Image.Image:
    # Pillow's own bomb guard fires in `open` (error) or as a warning; both become errors here.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(file, formats=FORMATS)
        except UnidentifiedImageError as error:
            raise ValueError(f"the file {UNDECODABLE}") from error
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ValueError(f"image rejected as a possible decompression bomb ({error})") from error
        except MemoryError:
            raise
        except Exception as error:  # a header Pillow recognised but could not parse: its parsers raise anything
            raise ValueError(_corrupt_message(error)) from error
    with image:
        _check_size(image, max_pixels, max_bytes)  # header only: nothing decoded yet
        return _decode(image)


def _decode(image: Image.Image) -> Image.Image:
    try:
        image.load()
        return _to_rgb(_upright(image))
    except MemoryError:
        raise
    except Exception as error:  # malformed pixel data or metadata: Pillow's decoders raise many exception types
        raise ValueError(_corrupt_message(error)) from error


def _upright(image: Image.Image) -> Image.Image:
    """The pixels turned as the EXIF orientation tag says. Only the tag is read: `ImageOps.exif_transpose`
    also rewrites the whole EXIF block and fails on harmless oddities such as an ASCII-typed XResolution."""
    transpose = UPRIGHT.get(image.getexif().get(EXIF_ORIENTATION))
    return image if transpose is None else image.transpose(transpose)


def _corrupt_message(error: BaseException) -> str:
    return f"the image is truncated or corrupt and {UNDECODABLE} ({error})"


def _check_size(image: Image.Image, max_pixels: int, max_bytes: int) -> None:
    width, height = image.size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ValueError(f"image is {width}×{height} pixels: degenerate, need at least {MIN_SIDE}×{MIN_SIDE}")
    if width * height > max_pixels:
        raise ValueError(
            f"image is {width}×{height} = {width * height:,} pixels, more than the limit of {max_pixels:,}; "
            "downscale it first"
        )
    size = decoded_bytes(image.mode, image.size)
    if size > max_bytes:
        raise ValueError(
            f"a {width}×{height} {image.mode} image takes {size / 1e6:,.0f} MB decoded, more than the limit of "
            f"{max_bytes / 1e6:,.0f} MB; downscale it first"
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
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer images as 16-bit data (0..65535 → 0..255); float images stretched min..max.

    Converted a strip of rows at a time, so the temporaries stay a few MB whatever the image size.
    """
    width, height = image.size
    rows = max(1, STRIP_PIXELS // width)
    strips = [(0, top, width, min(height, top + rows)) for top in range(0, height, rows)]
    if image.mode == "F":
        ranges = [(s.min(), s.max()) for s in (np.nan_to_num(np.asarray(image.crop(box))) for box in strips)]
        low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
        scale = 255.0 / (high - low) if high > low else 0.0
    out = np.empty((height, width), np.uint8)
    for box in strips:
        values = np.asarray(image.crop(box))
        if image.mode == "F":
            converted = np.round((np.nan_to_num(values).astype(np.float64) - low) * scale)
        else:  # round(v / 257) without floats: 65535 / 255 = 257 exactly and 257 is odd, so no ties
            converted = (np.clip(values, 0, 65535).astype(np.uint32) + 128) // 257
        out[box[1]:box[3]] = converted
    return Image.fromarray(out)

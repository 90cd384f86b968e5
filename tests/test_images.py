"""load_image / fit_image on every kind of input, good and bad. Test images are made here with PIL."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import gprune.images
from gprune.images import decoded_bytes, fit_image, load_image


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _noise(width=64, height=48, mode="RGB") -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width × height` pixels but holds almost no data (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return b"\x89PNG\r\n\x1a\n" + ihdr + _encode(_noise(4, 4), "PNG")[33:]  # original IDAT + IEND


def _rgb(image):
    assert image.mode == "RGB"
    return np.asarray(image)


# --- accepted inputs ---------------------------------------------------------------------------------------


def test_path_bytes_and_pil_give_the_same_pixels(tmp_path):
    original = _noise()
    path = tmp_path / "noise.png"
    original.save(path)
    expected = np.asarray(original)
    for source in (path, str(path), path.read_bytes(), bytearray(path.read_bytes()), original):
        assert np.array_equal(_rgb(load_image(source)), expected)


def test_numpy_arrays():
    gray = np.arange(6 * 5, dtype=np.uint8).reshape(6, 5)
    assert np.array_equal(_rgb(load_image(gray)), np.repeat(gray[..., None], 3, -1))
    color = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    assert np.array_equal(_rgb(load_image(color[:, ::-1])), color[:, ::-1])  # non-contiguous view
    rgba = np.zeros((6, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, fully transparent → white
    assert (_rgb(load_image(rgba)) == 255).all()


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((6, 5), dtype=np.float32), "must be uint8"),
        (np.zeros((6, 5, 2), dtype=np.uint8), "must have shape"),
        (np.zeros((2, 6, 5, 3), dtype=np.uint8), "must have shape"),
    ],
)
def test_bad_numpy_arrays(array, message):
    with pytest.raises(ValueError, match=message):
        load_image(array)


def test_grayscale_and_palette():
    gray = _noise(mode="L")
    out = _rgb(load_image(_encode(gray, "PNG")))
    assert np.array_equal(out, np.repeat(np.asarray(gray)[..., None], 3, -1))
    palette = _noise().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert np.array_equal(_rgb(load_image(_encode(palette, "PNG"))), np.asarray(palette.convert("RGB")))


def test_rgba_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    image.putpixel((1, 0), (0, 0, 0, 128))
    out = _rgb(load_image(_encode(image, "PNG")))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (127, 127, 127)
    assert tuple(out[3, 3]) == (255, 255, 255)


def test_palette_transparency_is_composited_on_white():
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 255, 0])
    image.info["transparency"] = 1
    assert (_rgb(load_image(_encode(image, "PNG", transparency=1))) == 255).all()


def test_cmyk():
    image = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # pure red in CMYK
    out = _rgb(load_image(_encode(image, "TIFF")))
    assert out.shape == (6, 8, 3) and tuple(out[0, 0]) == (255, 0, 0)


def test_16_bit_is_scaled_not_clipped():
    values = np.array([[0, 257, 32768, 65535]] * 3, dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    data = _encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = _rgb(load_image(data))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    assert tuple(_rgb(load_image(data))[4, 4]) == (255, 0, 0)


def test_exif_orientation_is_respected():
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 10, 10))  # black square at the top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    out = load_image(_encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)
    pixels = _rgb(out).mean(-1)
    assert pixels[2, 17] < 60 and pixels[2, 2] > 200  # the top-left corner moved to the top-right


def test_exif_orientation_is_read_from_the_tag_alone():
    """An ASCII-typed XResolution made `ImageOps.exif_transpose` raise TypeError while rewriting the EXIF block."""
    ifd = (struct.pack("<H", 2) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
           + struct.pack("<HHI", 0x011A, 2, 4) + b"abc\0" + struct.pack("<I", 0))
    data = _encode(_noise(40, 20), "JPEG", exif=b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd)
    assert Image.open(io.BytesIO(data)).getexif()[0x011A] == "abc"
    assert load_image(data).size == (20, 40)


def test_float_images_are_stretched_a_strip_at_a_time(monkeypatch):
    values = np.linspace(-3.0, 5.0, 7 * 9, dtype=np.float32).reshape(9, 7)
    values[4, 4] = np.nan  # counted as 0, as before
    monkeypatch.setattr(gprune.images, "STRIP_PIXELS", 14)  # two rows per strip: five strips
    out = _rgb(load_image(Image.fromarray(values, "F")))[..., 0]
    expected = np.round((np.nan_to_num(values).astype(np.float64) + 3.0) * (255.0 / 8.0))
    assert np.array_equal(out, expected)


# --- rejected inputs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["TGA", "PCX", "SGI", "PPM", "ICO", "EPS"])
def test_only_the_documented_formats_are_opened(fmt):
    data = _encode(_noise(), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow alone would open it
    with pytest.raises(ValueError, match="could not be decoded as an image; upload a PNG, JPEG, WebP, GIF, BMP or TIFF"):
        load_image(data)


def test_any_decoder_failure_is_a_value_error():
    """Pillow's decoders raise many exception types on malformed data (here IndexError from QOI)."""
    cut = Image.open(io.BytesIO(_encode(_noise(32, 32), "QOI")[:22]))  # a PIL image opened by the caller ...
    with pytest.raises(ValueError, match="truncated or corrupt .*index out of range"):
        load_image(cut)  # ... decoded here


def test_decoded_bytes_are_checked_from_the_header():
    assert [decoded_bytes(mode, (10, 10)) for mode in ("1", "L", "P", "I;16", "I", "F", "LA", "RGB", "RGBA")] == [
        100, 100, 100, 200, 400, 400, 400, 400, 400]
    with pytest.raises(ValueError, match="a 100×100 RGB image takes 0 MB decoded, more than the limit of 0 MB"):
        load_image(_png_claiming(100, 100), max_bytes=39_999)  # the header alone: its data is a 4×4 image's
    assert load_image(_noise(100, 100), max_bytes=40_000).size == (100, 100)



@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x01garbage" * 50, b"hello, this is a plain text file\n" * 20, b"\x89PNG\r\n\x1a\n" + b"\x00" * 30],
    ids=["empty", "corrupt-bytes", "text", "png-signature-only"],
)
def test_undecodable_data(data):
    with pytest.raises(ValueError, match="could not be decoded as an image; upload a PNG, JPEG, WebP, GIF, BMP or TIFF"):
        load_image(data)


def test_text_file_path(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image\n")
    with pytest.raises(ValueError, match="could not be decoded as an image"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(fmt):
    data = _encode(_noise(100, 100), fmt)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])


def test_missing_path(tmp_path):
    with pytest.raises(ValueError, match="no image file"):
        load_image(tmp_path / "absent.png")


@pytest.mark.parametrize("size", [(1, 1), (1, 50), (50, 1)])
def test_degenerate_sizes(size):
    image = Image.new("RGB", size)
    for source in (image, _encode(image, "PNG"), np.zeros((size[1], size[0], 3), dtype=np.uint8)):
        with pytest.raises(ValueError, match="degenerate"):
            load_image(source)


def test_two_by_two_is_accepted():
    assert load_image(Image.new("RGB", (2, 2))).size == (2, 2)


def test_decompression_bomb_header_is_rejected_before_decoding():
    with pytest.raises(ValueError, match="decompression bomb"):
        load_image(_png_claiming(30000, 30000))  # 9·10⁸ pixels: Pillow's own guard
    with pytest.raises(ValueError, match="more than the limit of 50,000,000"):
        load_image(_png_claiming(8000, 8000))  # 6.4·10⁷ pixels: only our limit


def test_small_max_pixels():
    image = _noise(64, 48)
    with pytest.raises(ValueError, match="64×48 = 3,072 pixels, more than the limit of 3,000"):
        load_image(_encode(image, "PNG"), max_pixels=3000)
    with pytest.raises(ValueError, match="more than the limit"):
        load_image(image, max_pixels=3000)
    assert load_image(image, max_pixels=3072).size == (64, 48)


@pytest.mark.parametrize("bad", [0, 3, -5, 2.5, True, None])
def test_bad_limits(bad):
    with pytest.raises(ValueError, match="max_pixels must be"):
        load_image(_noise(), max_pixels=bad)
    with pytest.raises(ValueError, match="max_bytes must be"):
        load_image(_noise(), max_bytes=bad)


def test_unsupported_source_type():
    with pytest.raises(ValueError, match="image must be a file path, bytes, a PIL image or a uint8 numpy array"):
        load_image(12345)


# --- fit_image ---------------------------------------------------------------------------------------------


def test_fit_image():
    large = Image.new("RGB", (4000, 3000))
    assert fit_image(large).size == (1344, 1008)
    assert fit_image(Image.new("RGB", (300, 1000)), max_side=500).size == (150, 500)
    small = Image.new("RGB", (640, 480))
    assert fit_image(small) is small
    exact = Image.new("RGB", (1344, 100))
    assert fit_image(exact) is exact
    with pytest.raises(ValueError, match="max_side must be"):
        fit_image(small, max_side=0)

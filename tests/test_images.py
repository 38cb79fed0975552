"""The upload decoder: every unreadable upload is a 400 "image: ..." and nothing else.

Images are made here from tests/data/groceries.jpg, re-encoded small, so the
cases stay fast; formats Pillow cannot write (48-bit PNG, PNG headers with
absurd sizes) are written byte by byte.
"""

from __future__ import annotations

import functools
import io
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from sam2_server import images
from sam2_server.api.errors import status_of
from sam2_server.errors import ServiceError
from sam2_server.images import decode_image, probe_image
from tests.conftest import image_bytes

# Pillow warns on some damaged files; a server run with warnings as errors must
# still answer 400, so every test here runs that way.
pytestmark = pytest.mark.filterwarnings("error")

LIMIT = 40_000_000
SMALL_LIMIT = 1_000_000  # the fuzzed headers may claim any size: keep decodes small
T = TypeVar("T")
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")


# -- making images -------------------------------------------------------------------------


@functools.cache
def photo() -> Image.Image:
    return Image.open(io.BytesIO(image_bytes("groceries.jpg"))).convert("RGB")


@functools.cache
def small_photo() -> Image.Image:
    return photo().resize((64, 43))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@functools.cache
def small(fmt: str) -> bytes:
    return encode(small_photo(), fmt)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def png(width: int, height: int, *, bit_depth: int, color_type: int, idat: bytes = b"") -> bytes:
    """A PNG written by hand, for what Pillow will not write (48-bit, lying headers)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat or zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )


def rows(pixels: np.ndarray) -> bytes:
    """Scanlines with filter type 0 (none), as the IDAT stream wants them."""
    flat = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    filters = np.zeros((flat.shape[0], 1), dtype=np.uint8)
    return np.hstack([filters, flat]).tobytes()


def decoded(data: bytes) -> np.ndarray:
    image = decode_image(data, max_pixels=LIMIT)
    assert image.mode == "RGB"
    return np.asarray(image)


def rgb_from_gray(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def assert_bad_request(data: bytes, *fragments: str, max_pixels: int = LIMIT) -> str:
    """decode_image and probe_image both refuse with a 400 "image: ..." message."""
    with pytest.raises(ServiceError) as caught:
        decode_image(data, max_pixels=max_pixels)
    error = caught.value
    assert status_of(error) == 400
    assert error.message.startswith("image:"), error.message
    for fragment in fragments:
        assert fragment in error.message, error.message
    return error.message


# -- failures ------------------------------------------------------------------------------


def jpeg_bytes() -> bytes:
    return image_bytes("groceries.jpg")


TRUNCATED_HEADERS = {
    "jpeg first 200 bytes": lambda: jpeg_bytes()[:200],
    "png first 16 bytes": lambda: small("PNG")[:16],
    "P6 alone": lambda: b"P6",
    "bmp file header alone": lambda: small("BMP")[:14],
    "gif signature alone": lambda: small("GIF")[:6],
    "tiff first 8 bytes": lambda: small("TIFF")[:8],
    "webp first 20 bytes": lambda: small("WEBP")[:20],
}


@pytest.mark.parametrize("name", TRUNCATED_HEADERS)
def test_truncated_header_is_400(name):
    data = TRUNCATED_HEADERS[name]()
    message = assert_bad_request(data, "truncated or corrupt")
    with pytest.raises(ServiceError, match="truncated or corrupt"):
        probe_image(data, max_pixels=LIMIT)
    assert "not an image format" not in message


@pytest.mark.parametrize(
    "make",
    [lambda: jpeg_bytes(), lambda: small("PNG"), lambda: small("BMP")],
    ids=["jpeg", "png", "bmp"],
)
def test_truncated_pixel_data_is_400_but_probes(make):
    data = make()
    half = data[: len(data) // 2]
    assert probe_image(half, max_pixels=LIMIT) == probe_image(data, max_pixels=LIMIT)
    assert_bad_request(half, "could not be decoded", "truncated")


def test_garbage_is_not_an_image():
    garbage = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert_bad_request(garbage, "not an image format")
    assert_bad_request(b"this is text", "not an image format")


def test_empty_upload():
    assert_bad_request(b"", "empty")
    with pytest.raises(ServiceError, match="empty"):
        probe_image(b"", max_pixels=LIMIT)


def test_absurd_header_size_is_refused_before_decoding(monkeypatch):
    def must_not_decode(self):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", must_not_decode)
    data = png(100_000, 100_000, bit_depth=8, color_type=2)
    assert len(data) < 100
    assert_bad_request(data, "100000x100000", str(LIMIT), "MAX_IMAGE_PIXELS")
    with pytest.raises(ServiceError, match="100000x100000"):
        probe_image(data, max_pixels=LIMIT)


def test_zero_size_is_400():
    assert_bad_request(png(0, 10, bit_depth=8, color_type=0))


def test_memory_error_is_not_a_client_error(monkeypatch):
    def out_of_memory(self):
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", out_of_memory)
    with pytest.raises(MemoryError):
        decode_image(small("PNG"), max_pixels=LIMIT)


def test_size_changed_by_load_is_400(monkeypatch):
    load = ImageFile.ImageFile.load

    def lying_load(self):
        result = load(self)
        self._size = (self.size[0] + 1, self.size[1])
        return result

    monkeypatch.setattr(ImageFile.ImageFile, "load", lying_load)
    assert_bad_request(small("PNG"), "differs from")


def test_failure_messages_are_short():
    message = assert_bad_request(jpeg_bytes()[: len(jpeg_bytes()) // 2])
    assert len(message) < 400


# -- formats and modes that must decode ----------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_formats_decode_as_pillow_converts(fmt):
    data = small(fmt)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert probe_image(data, max_pixels=LIMIT) == (64, 43)
    np.testing.assert_array_equal(decoded(data), expected)


def test_multi_frame_gif_gives_first_frame():
    frames = [
        Image.new("RGB", (8, 6), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    ]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    pixels = decoded(data)
    assert pixels.shape == (6, 8, 3)
    assert (pixels == (255, 0, 0)).all()


def test_multi_page_tiff_gives_first_page():
    pages = [Image.new("RGB", (5, 4), (10, 20, 30)), Image.new("RGB", (7, 9), (1, 2, 3))]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert probe_image(data, max_pixels=LIMIT) == (5, 4)
    assert (decoded(data) == (10, 20, 30)).all()


def test_one_bit_image():
    bilevel = small_photo().convert("1")
    data = encode(bilevel, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "1"
    expected = rgb_from_gray(np.asarray(bilevel.convert("L")))
    np.testing.assert_array_equal(decoded(data), expected)


def test_cmyk_jpeg():
    data = encode(small_photo().convert("CMYK"), "JPEG")
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "CMYK"
    np.testing.assert_array_equal(decoded(data), np.asarray(opened.convert("RGB")))


# Pillow warns when converting bytes transparency to RGB: pytestmark makes that an error.
def test_palette_png_with_transparency():
    palette = Image.new("P", (4, 2))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * (254 * 3))
    palette.putdata([0, 1, 0, 1, 1, 0, 1, 0])
    data = encode(palette, "PNG", transparency=bytes([0, 128]))
    assert isinstance(Image.open(io.BytesIO(data)).info["transparency"], bytes)
    expected = np.array([[[255, 0, 0], [0, 255, 0]] * 2, [[0, 255, 0], [255, 0, 0]] * 2])
    np.testing.assert_array_equal(decoded(data), expected)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped(mode):
    image = small_photo().convert(mode)
    data = encode(image, "PNG")
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == mode
    np.testing.assert_array_equal(decoded(data), np.asarray(opened.convert("RGB")))


# -- high bit depth and float --------------------------------------------------------------


@functools.cache
def gray() -> np.ndarray:
    return np.asarray(photo().convert("L"))


def test_16_bit_grayscale_png_equals_8_bit():
    sixteen = encode(Image.fromarray(gray().astype(np.uint16) * 257), "PNG")
    assert Image.open(io.BytesIO(sixteen)).mode in ("I;16", "I")
    eight = decoded(encode(Image.fromarray(gray()), "PNG"))
    np.testing.assert_array_equal(decoded(sixteen), eight)
    np.testing.assert_array_equal(eight, rgb_from_gray(gray()))


def test_16_bit_big_endian_mode():
    wide = gray().astype(">u2") * 257
    image = Image.frombytes("I;16B", wide.shape[::-1], wide.tobytes())
    assert image.mode == "I;16B"
    np.testing.assert_array_equal(np.asarray(images._to_rgb(image)), rgb_from_gray(gray()))


def test_16_bit_scaling_rounds():
    values = np.array([[0, 128, 129, 257, 65406, 65407, 65535]], dtype=np.uint16)
    assert images._gray_to_8bit(values, "I;16").tolist() == [[0, 0, 1, 1, 254, 255, 255]]


def test_48_bit_rgb_png_equals_8_bit():
    pixels = np.asarray(small_photo())
    height, width, _ = pixels.shape
    wide = pixels.astype(">u2") * 257
    data = png(width, height, bit_depth=16, color_type=2, idat=zlib.compress(rows(wide)))
    np.testing.assert_array_equal(decoded(data), pixels)


def test_64_bit_rgba_png_drops_alpha():
    pixels = np.asarray(small_photo())
    alpha = np.full((*pixels.shape[:2], 1), 1234, dtype=">u2")
    wide = np.concatenate([pixels.astype(">u2") * 257, alpha], axis=2)
    height, width = pixels.shape[:2]
    data = png(width, height, bit_depth=16, color_type=6, idat=zlib.compress(rows(wide)))
    np.testing.assert_array_equal(decoded(data), pixels)


def float_tiff(values: np.ndarray) -> bytes:
    data = encode(Image.fromarray(values.astype(np.float32)), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    return data


def test_float_tiff_in_unit_range_equals_8_bit():
    np.testing.assert_array_equal(decoded(float_tiff(gray() / 255)), rgb_from_gray(gray()))


def test_float_tiff_in_byte_range_is_kept():
    np.testing.assert_array_equal(decoded(float_tiff(gray().astype(float))), rgb_from_gray(gray()))


def test_float_out_of_range_is_min_max_normalised_and_nan_is_zero():
    values = np.array([[-1.0, 0.0, 1.0, np.nan], [np.inf, -np.inf, 3.0, 0.5]])
    expected = np.array([[0, 64, 128, 64], [64, 64, 255, 96]], dtype=np.uint8)
    np.testing.assert_array_equal(decoded(float_tiff(values))[..., 0], expected)


def test_constant_float_out_of_range_is_black():
    assert (decoded(float_tiff(np.full((3, 3), -7.0))) == 0).all()


def int_tiff(values: np.ndarray) -> bytes:
    data = encode(Image.fromarray(values.astype(np.int32)), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    return data


def test_mode_i_with_8_bit_values_is_kept():
    np.testing.assert_array_equal(decoded(int_tiff(gray())), rgb_from_gray(gray()))


def test_mode_i_with_16_bit_values_is_scaled():
    wide = gray().astype(np.int32) * 257
    np.testing.assert_array_equal(decoded(int_tiff(wide)), rgb_from_gray(gray()))


def test_mode_i_out_of_range_is_min_max_normalised():
    values = np.array([[-100, 0, 100, 155]])
    assert decoded(int_tiff(values))[..., 0].tolist() == [[0, 100, 200, 255]]


# -- probe_image ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_probe_reads_the_header_only(fmt, monkeypatch):
    def must_not_decode(self):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", must_not_decode)
    assert probe_image(small(fmt), max_pixels=LIMIT) == (64, 43)


def test_probe_is_fast_on_a_bomb():
    width = height = 20_000
    compressor = zlib.compressobj(9)
    row = bytes(1 + width // 8)  # 1-bit grayscale: filter byte + packed pixels
    chunk = row * 1000
    idat = b"".join(compressor.compress(chunk) for _ in range(height // 1000)) + compressor.flush()
    bomb = png(width, height, bit_depth=1, color_type=0, idat=idat)
    assert len(bomb) < 200_000
    start = time.perf_counter()
    assert probe_image(bomb, max_pixels=width * height) == (width, height)
    assert time.perf_counter() - start < 0.5
    assert_bad_request(bomb, "20000x20000", "possible decompression bomb")


def test_images_module_does_not_import_torch():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('images_alone', {images.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(images.__file__).parent)


# -- properties ----------------------------------------------------------------------------


def outcome(call: Callable[[], T]) -> T | ServiceError:
    """The call's result, or the ServiceError it raised; anything else fails the test."""
    try:
        return call()
    except ServiceError as error:
        return error


def assert_client_error(error: ServiceError) -> None:
    assert status_of(error) == 400
    assert error.message.startswith("image:"), error.message


def check_decodes_or_refuses(data: bytes) -> None:
    """The contract: an RGB image of the probed size, or a 400 "image: ..." error."""
    probed = outcome(lambda: probe_image(data, max_pixels=SMALL_LIMIT))
    result = outcome(lambda: decode_image(data, max_pixels=SMALL_LIMIT))
    if isinstance(probed, ServiceError):
        assert_client_error(probed)
        assert isinstance(result, ServiceError)
        assert result.message == probed.message  # decode_image makes the same checks
    elif isinstance(result, ServiceError):
        assert_client_error(result)  # a good header over a bad body
    else:
        assert result.mode == "RGB"
        assert result.size == probed


PROPERTY_SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_decode_or_refuse(data):
    check_decodes_or_refuses(data)


SIGNATURES = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"\xff\xd8\xff",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8",
    b"P6",
)


@PROPERTY_SETTINGS
@given(st.sampled_from(SIGNATURES), st.binary(max_size=512))
def test_known_signature_then_arbitrary_bytes_decode_or_refuse(signature, rest):
    check_decodes_or_refuses(signature + rest)


@PROPERTY_SETTINGS
@given(st.sampled_from(FORMATS), st.data())
def test_truncated_real_images_decode_or_refuse(fmt, draw):
    original = small(fmt)
    cut = draw.draw(st.integers(0, len(original)), label="cut")
    check_decodes_or_refuses(original[:cut])


@PROPERTY_SETTINGS
@given(st.sampled_from(FORMATS), st.data())
def test_damaged_real_images_decode_or_refuse(fmt, draw):
    original = small(fmt)
    start = draw.draw(st.integers(0, len(original) - 1), label="start")
    patch = draw.draw(st.binary(min_size=1, max_size=64), label="patch")
    damaged = original[:start] + patch + original[start + len(patch) :]
    check_decodes_or_refuses(damaged[: len(original)])

"""Upload bytes → RGB image, with the failures a client caused reported as 400.

The reference opens uploads with `ImageFile.LOAD_TRUNCATED_IMAGES = True` and
answers 500 on anything it cannot read; here a non-image, a truncated file or
a decompression bomb is the client's problem and says so.
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from sam2_server.errors import bad_request

# Pillow's own bomb check is global, warns below twice its limit and raises
# without the image size. The pixel count is checked here instead, from the
# header, before any pixel data is decoded, against the server's setting.
Image.MAX_IMAGE_PIXELS = None


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode to an RGB PIL image, as the reference does (`.convert("RGB")`).

    EXIF orientation is deliberately not applied: the reference does not, and
    clients' point coordinates refer to the stored pixel grid.
    """
    if not data:
        raise bad_request("image: the uploaded file is empty.")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise bad_request(
            "image: the uploaded file is not an image format this server can read "
            "(png, jpeg, webp, gif, bmp, tiff ...)."
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise bad_request(
            f"image: {width}x{height} is larger than this server's limit of {max_pixels} "
            "pixels (possible decompression bomb); resize it or raise MAX_IMAGE_PIXELS."
        )
    if width == 0 or height == 0:
        raise bad_request("image: the image has no pixels.")
    try:
        image.load()
        return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise bad_request(
            f"image: the file could not be decoded, it may be truncated or corrupt ({exc})."
        ) from None

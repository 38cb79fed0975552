"""What the native surfaces (images, automatic masks, videos) share: the image id
checked and looked up, JSON arrays, the prompt checks' messages in native names,
the polygon mask's shape and its `polygon_epsilon`, and the segment answer
(which the Livepeer route also gives on request).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field, field_validator
from pydantic.config import JsonDict

from sam2_server.api.admission import Ticket
from sam2_server.api.answers import Answers
from sam2_server.api.observe import RequestRecord
from sam2_server.api.pipeline import require_ready, start_request
from sam2_server.api.responses import serialise
from sam2_server.api.schemas import RequestBody
from sam2_server.api.service import Segmenter
from sam2_server.codecs.native import native_answer
from sam2_server.domain import IMAGE_ID_PATTERN, ImageInfo, Prediction
from sam2_server.errors import ImageNotCached, ServiceError, bad_request
from sam2_server.prompts import array_from_json

# The native API's field names, for messages shared with the Livepeer route's parser.
_NATIVE_NAMES = (("point_coords", "points"), ("point_labels", "labels"))

ImageId = Annotated[str, Path(description="SHA-256 (hex) of the image's bytes.")]

# Beyond a few hundred pixels every ring is already down to its fewest points;
# the bound only turns a typo (1e9, -1, NaN) into a 400 naming the field.
MAX_POLYGON_EPSILON = 1000.0

MASK_FORMAT_DESCRIPTION = (
    "`rle`: COCO RLE {size, counts} (pycocotools); `png`: a base64 grayscale PNG, 255 inside; "
    "`polygon`: {size, polygons}, one polygon per 8-connected region, each a list of rings "
    "(the outer boundary, then one per hole), each ring a list of [x, y] at the centres of "
    "the region's border pixels. A region inside a hole is a polygon of its own."
)
POLYGON_EPSILON_DESCRIPTION = (
    "With mask_format `polygon`: simplify every ring (Douglas-Peucker, keeping some of its "
    "points) to within this many pixels; 0 (default) is exact: the rings rasterize back to "
    f"the mask pixel for pixel. Between 0 and {MAX_POLYGON_EPSILON:g}; another mask_format "
    "takes only 0."
)
# The schema states the bound; the check below answers a 400 naming the field.
POLYGON_EPSILON_SCHEMA: JsonDict = {"minimum": 0, "maximum": MAX_POLYGON_EPSILON}


class MaskOutputFields(RequestBody):
    """How masks come back, the same two fields on every native route that answers masks
    (segment, automatic masks, video prompts and propagation). An explicit `null` is
    the default, on each of them alike."""

    mask_format: Literal["rle", "png", "polygon"] = Field(
        "rle", description=MASK_FORMAT_DESCRIPTION
    )
    polygon_epsilon: float = Field(
        0.0, description=POLYGON_EPSILON_DESCRIPTION, json_schema_extra=POLYGON_EPSILON_SCHEMA
    )

    @field_validator("mask_format", "polygon_epsilon", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any, info: Any) -> Any:
        if value is None:
            return cls.model_fields[info.field_name].default
        return value

    def checked_epsilon(self) -> float:
        """`polygon_epsilon` checked: a finite number of pixels in its bound, and nonzero
        only with polygons (another format would ignore it silently); a 400 naming it
        otherwise (a 400, as every native check, not the schema's 422)."""
        epsilon = self.polygon_epsilon
        if not math.isfinite(epsilon) or not 0 <= epsilon <= MAX_POLYGON_EPSILON:
            raise bad_request(
                f"polygon_epsilon must be a number of pixels between 0 and "
                f"{MAX_POLYGON_EPSILON:g}; got {epsilon!r}."
            )
        if epsilon and self.mask_format != "polygon":
            raise bad_request(
                f'polygon_epsilon simplifies polygons: it needs mask_format "polygon", not '
                f"{self.mask_format!r}."
            )
        return float(epsilon)


class PolygonMask(BaseModel):
    """A binary mask as polygons (mask_format `polygon`).

    Each ring runs through the centres of border pixels (pixel (x, y) spans x-0.5..x+0.5);
    it is not closed (the last point is not the first again) and may be a single point
    (a one-pixel region) or a line. Exact rings come in OpenCV's order: outer rings
    counterclockwise as the image is shown (y down), holes clockwise. To draw the mask
    back: polygons in order of decreasing outer-ring area (a region inside a hole comes
    after the hole), fill the outer ring with its edges (`cv2.fillPoly` +
    `cv2.polylines`), clear each hole's inside, then draw the hole's ring (its pixels are
    the mask's); `sam2_server.codecs.polygons.rasterize` does this.
    """

    size: list[int] = Field(..., description="[height, width], as in COCO RLE.")
    polygons: list[list[list[list[int]]]] = Field(
        ...,
        description="One per 8-connected region: [outer ring, hole ring, ...], "
        "each ring [[x, y], ...] in pixels.",
    )


def start_by_id(
    request: Request, segmenter: Segmenter, model_id: str, image_id: str
) -> tuple[RequestRecord, str]:
    """A request on an image by id, its first checks in the contract's order: the model
    (400), then the id's form (404); the record and the model id it resolved to."""
    record, model = start_request(request, segmenter, model_id)
    check_image_id(image_id, model)
    return record, model


async def ready_image(segmenter: Segmenter, model: str, image_id: str) -> ImageInfo:
    """Once the request's own fields are checked: the server is ready (503), and it
    still holds the image (404)."""
    require_ready(segmenter)
    return await cached_image(segmenter, model, image_id)


def check_image_id(image_id: str, model: str) -> None:
    """A malformed id was never uploaded: the same 404, before the body is looked at."""
    if not IMAGE_ID_PATTERN.match(image_id):
        raise ImageNotCached(image_id, model)


async def cached_image(segmenter: Segmenter, model: str, image_id: str) -> ImageInfo:
    """The image's description, or the 404 once the server no longer holds it.

    Off the event loop: in a cluster a replica may fetch the upload to describe it.
    """
    info = await run_in_threadpool(segmenter.find_image, model, image_id)
    if info is None:
        raise ImageNotCached(image_id, model)
    return info


def in_native_names(error: ServiceError) -> ServiceError:
    """A 400 of the shared prompt checks, with the native API's field names."""
    message = error.message
    for livepeer_name, native_name in _NATIVE_NAMES:
        message = message.replace(livepeer_name, native_name)
    return bad_request(message)


def json_array(value: list[Any] | None, name: str) -> Any:
    """An empty list means "not given", as an empty form field does on the Livepeer route."""
    return array_from_json(value, name) if value else None


def image_fields(info: ImageInfo) -> dict[str, Any]:
    return {
        "image_id": info.image_id,
        "model_id": info.model_id,
        "width": info.width,
        "height": info.height,
        "cached": info.cached,
    }


async def segment_answer(
    record: RequestRecord,
    ticket: Ticket,
    prediction: Prediction,
    image: ImageInfo,
    mask_format: str,
    answers: Answers,
    *,
    return_logits: bool,
    polygon_epsilon: float = 0.0,
) -> Response:
    """The native segment answer (binary masks, scores, packed logits) on `image`, as
    both the native route and the Livepeer route's `mask_format` write it; its logits
    are kept in `answers` under the answer's `answer_id`."""

    def encode() -> bytes:
        answer_id = answers.keep(image.model_id, image.image_id, prediction.logits)
        return native_answer(
            prediction,
            image_id=image.image_id,
            model_id=image.model_id,
            width=image.width,
            height=image.height,
            mask_format=mask_format,
            return_logits=return_logits,
            polygon_epsilon=polygon_epsilon,
            answer_id=answer_id,
        )

    return await serialise(record, ticket, encode)

"""The steps every annotation tool's surface shares: encode an image, decode a prompt.

Label Studio, CVAT, X-AnyLabeling and Roboflow each read a request their
own way and answer in their own shape; between those, a click takes the
native API's path (model check, readiness, admission, work in a worker thread
a departed client can abandon, timings in the access log), so for the same
image and prompt every tool gets the native API's mask, and the same cache.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request

from sam2_server.api.admission import Admission, estimate_work_bytes
from sam2_server.api.pipeline import (
    check_finite,
    request_record,
    require_ready,
    run_admitted,
    start_request,
)
from sam2_server.api.service import Segmenter
from sam2_server.domain import ImageInfo, Prediction, Prompt, Timings, Work
from sam2_server.errors import ImageNotCached


def start_tool_request(request: Request, segmenter: Segmenter, model_id: str | None) -> str:
    """The served model a tool asks for (400 naming the served ones), ready (503 while loading)."""
    _, model = start_request(request, segmenter, model_id)
    require_ready(segmenter)
    return model


async def add_image_bytes(
    request: Request, segmenter: Segmenter, admission: Admission, model: str, data: bytes
) -> ImageInfo:
    """Encode `data` (or find its embedding cached, by SHA-256) under admission."""
    width, height = await run_in_threadpool(segmenter.image_size, data)
    record = request_record(request)
    record.details.update(image_bytes=len(data), width=width, height=height)
    timings = Timings()

    def work(cancelled: Callable[[], bool]) -> ImageInfo:
        return segmenter.add_image(model, data, Work(timings, cancelled))

    cost = estimate_work_bytes(0, 0, height, width) + len(data)
    info, ticket = await run_admitted(request, admission, cost, timings, work)
    ticket.release()
    return info


async def segment_image_id(
    request: Request,
    segmenter: Segmenter,
    admission: Admission,
    model: str,
    image_id: str,
    prompt: Prompt,
) -> tuple[ImageInfo, Prediction]:
    """Decode `prompt` on a cached image; `ImageNotCached` (404) when it is not cached."""
    info = await run_in_threadpool(segmenter.find_image, model, image_id)
    if info is None:
        raise ImageNotCached(image_id, model)
    record = request_record(request)
    record.details.update(width=info.width, height=info.height, objects=prompt.num_objects)
    timings = Timings()

    def work(cancelled: Callable[[], bool]) -> tuple[ImageInfo, Prediction]:
        found, prediction = segmenter.segment_cached(
            model, image_id, prompt, Work(timings, cancelled)
        )
        return found, check_finite(prediction)

    candidates = 3 if prompt.multimask_output else 1
    cost = estimate_work_bytes(prompt.num_objects, candidates, info.height, info.width)
    result, ticket = await run_admitted(request, admission, cost, timings, work)
    ticket.release()
    return result


async def segment_bytes(
    request: Request,
    segmenter: Segmenter,
    admission: Admission,
    model: str,
    data: bytes,
    prompt: Prompt,
) -> tuple[ImageInfo, Prediction]:
    """Encode `data` unless its embedding is cached, then decode `prompt` on it.

    An embedding evicted between the two steps (a full cache under load) is
    encoded once more rather than failing the click.
    """
    info = await add_image_bytes(request, segmenter, admission, model, data)
    try:
        return await segment_image_id(request, segmenter, admission, model, info.image_id, prompt)
    except ImageNotCached:
        info = await add_image_bytes(request, segmenter, admission, model, data)
        return await segment_image_id(request, segmenter, admission, model, info.image_id, prompt)

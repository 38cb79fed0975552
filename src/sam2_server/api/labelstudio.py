"""Label Studio's ML backend protocol under /labelstudio (docs/tools.md).

Label Studio (1.23) talks to an ML backend at the URL a user gives it, here
`http://host:port/labelstudio`, with HTTP Basic (the server's token as the
password; `api/guard.py` checks it):

- `GET /health` (1 s) and `POST /setup` (3 s) when the backend is connected
  and whenever Label Studio refreshes its state. `/setup` names the project,
  its label config, Label Studio's own URL and the project owner's token;
  both are remembered per project so that the task images Label Studio
  serves (`/data/upload/...`) can be fetched (unless LABEL_STUDIO_URL pins
  the URL, and LABEL_STUDIO_API_KEY the token).
- `POST /predict` with `tasks` and, for an interactive click,
  `params.context.result`: the smart keypoints (`is_positive`) and
  rectangles the annotator placed, in percent of the image. All regions of
  one context make one prompt, every point plus the (last) box; the answer is
  the native API's best mask (multimask output, as the native API's default)
  as one `brushlabels` region on the project's BrushLabels control.
  Without a context (batch pre-annotation) the answer is empty, or the
  automatic masks with LABEL_STUDIO_PREANNOTATE=automatic.
- `/webhook`, `/metrics`, `/versions` and `/train` answer, so Label Studio's
  optional calls are not 404s; this server does not train.

A task's image is downloaded once: its URL is remembered with the SHA-256
of what it gave, so the next click on the task finds the embedding cached
and neither downloads nor encodes. Every download goes through
`api/downloads.py` (allow-list, size cap, timeout, no link-local).

Errors are Label Studio ML backend answers: the error's status with
`{"status": ..., "detail": "..."}` (label-studio-ml-backend's shape).
Label Studio turns a non-2xx answer into `{"errors": ["<status> ... for url:
..."]}` for the caller of interactive-annotating; the message itself is in
the body and in this server's access log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote_to_bytes, urlsplit
from xml.parsers import expat

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from sam2_server.api.admission import Admission, estimate_work_bytes
from sam2_server.api.deps import SegmenterDep
from sam2_server.api.downloads import Downloader, RememberedUrls
from sam2_server.api.errors import headers_of, message_of, status_of
from sam2_server.api.paths import LABEL_STUDIO_PATH
from sam2_server.api.pipeline import (
    automatic_limits,
    check_model,
    prompt_limits,
    request_record,
    run_admitted,
)
from sam2_server.api.responses import json_response
from sam2_server.api.service import Segmenter
from sam2_server.api.tool_pipeline import add_image_bytes, segment_image_id, start_tool_request
from sam2_server.codecs.automatic import rle_to_mask
from sam2_server.codecs.brush import mask2rle
from sam2_server.config import Settings
from sam2_server.domain import AutomaticParams, ImageInfo, MaskRecord, Prompt, Timings, Work
from sam2_server.errors import (
    ErrorKind,
    ImageNotCached,
    ServiceError,
    bad_request,
)
from sam2_server.prompts import check_automatic, prompt_from_arrays

logger = logging.getLogger(__name__)

MODEL_CLASS = "sam2-server"
MAX_PROJECTS = 1024  # projects whose /setup is remembered, least recently used out first
CLOUD_SCHEMES = ("s3:", "gs:", "azure-blob:")
KEYPOINT = "keypointlabels"
RECTANGLE = "rectanglelabels"


def labelstudio_error_body(status: int, message: str) -> bytes:
    """An error as label-studio-ml-backend answers one (also for the guard's 401/413/408)."""
    return orjson.dumps({"status": status, "detail": message})


def _error(exc: ServiceError) -> Response:
    status = status_of(exc)
    if status >= 500:
        logger.error("label studio: %s", exc.message)
    return Response(
        labelstudio_error_body(status, message_of_tool(exc)),
        status,
        headers_of(exc),
        media_type="application/json",
    )


def message_of_tool(exc: ServiceError) -> str:
    """The message, with the native API's remedy for an evicted image left out:
    Label Studio cannot upload, it only asks again (and then the image is fetched again)."""
    return exc.message if isinstance(exc, ImageNotCached) else message_of(exc)


# -- the label config ------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageTag:
    name: str
    key: str  # the task data field (`value="$image"` → "image")
    listed: bool  # `valueList`: the field holds a list of URLs, regions name `item_index`


@dataclass(frozen=True)
class BrushControl:
    name: str
    to_names: tuple[str, ...]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LabelConfig:
    images: dict[str, ImageTag]
    brushes: tuple[BrushControl, ...]

    def brushes_on(self, image: str) -> tuple[BrushControl, ...]:
        return tuple(b for b in self.brushes if image in b.to_names)

    def brush_images(self) -> tuple[ImageTag, ...]:
        """The Image tags some BrushLabels control draws on, in the config's order."""
        return tuple(tag for name, tag in self.images.items() if self.brushes_on(name))


class _Refused(Exception):
    pass


@lru_cache(maxsize=64)
def parse_label_config(text: str) -> LabelConfig:
    """The Image tags and BrushLabels controls of a label config (400 when unreadable).

    Label Studio sends the config with every /predict; it is XML from a project
    editor, so no DOCTYPE (hence no entity, internal or external) is accepted.
    """
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    images: dict[str, ImageTag] = {}
    brushes: list[BrushControl] = []
    open_brush: list[tuple[str, tuple[str, ...], list[str]]] = []
    depth_of_brush: list[int] = []
    depth = 0

    def refuse(*_: Any) -> None:
        raise _Refused("a DOCTYPE or entity declaration is not allowed in a label config")

    def refuse_external(*_: Any) -> int:
        raise _Refused("an external entity is not allowed in a label config")

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        kind = tag.lower()
        if kind == "image" and attrs.get("name"):
            source = attrs.get("valueList") or attrs.get("value") or ""
            images.setdefault(
                attrs["name"],
                ImageTag(attrs["name"], source.strip().lstrip("$"), "valueList" in attrs),
            )
        elif kind == "brushlabels" and attrs.get("name"):
            targets = tuple(t.strip() for t in attrs.get("toName", "").split(",") if t.strip())
            open_brush.append((attrs["name"], targets, []))
            depth_of_brush.append(depth)
        elif kind == "label" and open_brush and "value" in attrs:
            open_brush[-1][2].append(attrs["value"])

    def end(tag: str) -> None:
        nonlocal depth
        if depth_of_brush and depth_of_brush[-1] == depth:
            depth_of_brush.pop()
            name, targets, labels = open_brush.pop()
            brushes.append(BrushControl(name, targets, tuple(labels)))
        depth -= 1

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse_external
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    try:
        parser.Parse(text, True)
    except _Refused as exc:
        raise bad_request(f"label config: {exc}") from None
    except expat.ExpatError as exc:
        raise bad_request(f"label config is not valid XML: {exc}") from None
    return LabelConfig(images, tuple(brushes))


# -- what Label Studio sends --------------------------------------------------------------


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        content = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request body is not JSON ({exc})") from None
    if not isinstance(content, dict):
        raise bad_request("the request body must be a JSON object")
    return content


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a string")
    return value


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_request(f"{name} must be a JSON object")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_request(f"{name} must be a finite number")
    return float(value)


def _size(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise bad_request(f"{name} must be a positive integer")
    return int(value)


@dataclass
class Click:
    """Every smart region of one context, as one prompt on one image (pixels)."""

    to_name: str
    width: int
    height: int
    item_index: int | None
    points: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: list[float] | None = None
    label: str | None = None

    def prompt(self, settings: Settings) -> Prompt:
        return prompt_from_arrays(
            coords=np.asarray(self.points, dtype=np.float64) if self.points else None,
            labels=np.asarray(self.labels, dtype=np.int64) if self.points else None,
            boxes=np.asarray(self.box, dtype=np.float64) if self.box is not None else None,
            mask=None,
            multimask_output=True,  # the native API's default; the best mask is answered
            return_logits=False,
            normalize_coords=True,
            limits=prompt_limits(settings),
        )


def read_click(context: dict[str, Any]) -> Click | None:
    """The context's keypoints and rectangles (on the first region's image), or None."""
    regions = context.get("result")
    if regions is None:
        return None
    if not isinstance(regions, list):
        raise bad_request("params.context.result must be a list of regions")
    click: Click | None = None
    for index, region in enumerate(regions):
        name = f"params.context.result[{index}]"
        region = _object(region, name)
        kind = region.get("type")
        if kind not in (KEYPOINT, RECTANGLE):
            continue  # other controls' regions are not prompts
        to_name = _text(region.get("to_name", ""), f"{name}.to_name")
        width = _size(region.get("original_width"), f"{name}.original_width")
        height = _size(region.get("original_height"), f"{name}.original_height")
        rotation = region.get("image_rotation") or 0
        if _number(rotation, f"{name}.image_rotation") % 360:
            raise bad_request(
                f"{name}: the image is rotated by {rotation} degrees in Label Studio; "
                "rotate it back to 0 for interactive masks"
            )
        item_index = region.get("item_index")
        if item_index is not None and (
            isinstance(item_index, bool) or not isinstance(item_index, int)
        ):
            raise bad_request(f"{name}.item_index must be an integer")
        if click is None:
            click = Click(to_name, width, height, item_index)
        elif (to_name, item_index) != (click.to_name, click.item_index):
            continue  # another image's regions: one prompt is on one image
        elif (width, height) != (click.width, click.height):
            raise bad_request(f"{name}: original_width/height differ from the first region's")
        value = _object(region.get("value"), f"{name}.value")
        x = _number(value.get("x"), f"{name}.value.x") * width / 100
        y = _number(value.get("y"), f"{name}.value.y") * height / 100
        if kind == KEYPOINT:
            positive = region.get("is_positive", True)
            if not isinstance(positive, bool):
                raise bad_request(f"{name}.is_positive must be true or false")
            click.points.append([x, y])
            click.labels.append(1 if positive else 0)
        else:
            w = _number(value.get("width"), f"{name}.value.width") * width / 100
            h = _number(value.get("height"), f"{name}.value.height") * height / 100
            angle = _number(value.get("rotation") or 0, f"{name}.value.rotation")
            click.box = _bounds(x, y, w, h, angle)
        label = _region_label(value, kind)
        if label is not None:
            click.label = label
    return click


def _bounds(x: float, y: float, w: float, h: float, degrees: float) -> list[float]:
    """[x0, y0, x1, y1] around a rectangle turned `degrees` clockwise about its top-left
    corner, as Label Studio draws a rotated rectangle (its bounding box is SAM's box)."""
    if not degrees % 360:
        return [min(x, x + w), min(y, y + h), max(x, x + w), max(y, y + h)]
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    xs = [x, x + w * cos, x - h * sin, x + w * cos - h * sin]
    ys = [y, y + w * sin, y + h * cos, y + w * sin + h * cos]
    return [min(xs), min(ys), max(xs), max(ys)]


def _region_label(value: dict[str, Any], kind: str) -> str | None:
    for key in (kind, "labels"):
        labels = value.get(key)
        if isinstance(labels, list) and labels and isinstance(labels[0], str):
            return labels[0]
    return None


def _brush_for(config: LabelConfig, image: str, label: str | None) -> tuple[BrushControl, str]:
    """The BrushLabels control and label for a mask: the clicked label where a BrushLabels
    on the image has it, else that control's first label (else the clicked one)."""
    brushes = config.brushes_on(image)
    if not brushes:
        raise bad_request(
            f"the label config has no BrushLabels on the image {image!r}: interactive masks "
            "are answered as brush regions (add <BrushLabels name=... toName=...>)"
        )
    for brush in brushes:
        if label is not None and label in brush.labels:
            return brush, label
    brush = brushes[0]
    return brush, brush.labels[0] if brush.labels else (label or "")


# -- the state /setup leaves ------------------------------------------------------------------


@dataclass
class ProjectSetup:
    """What Label Studio's /setup said of one project."""

    hostname: str | None
    access_token: str | None
    model: str | None
    label_config: str | None
    automatic: AutomaticParams
    downloader: Downloader


class Projects:
    """Project id ("<id>.<created>") → its setup, least recently used first out."""

    def __init__(self, capacity: int = MAX_PROJECTS) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, ProjectSetup] = OrderedDict()

    def get(self, project: str) -> ProjectSetup | None:
        setup = self._items.get(project)
        if setup is not None:
            self._items.move_to_end(project)
        return setup

    def put(self, project: str, setup: ProjectSetup) -> None:
        self._items[project] = setup
        self._items.move_to_end(project)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def _http_url(value: Any) -> str | None:
    """An absolute http(s) URL without a trailing slash, or None."""
    if not isinstance(value, str):
        return None
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return value.strip().rstrip("/")


def _is_jwt(token: str) -> bool:
    """A JSON Web Token's shape (Label Studio's personal access tokens): sent as Bearer."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        header = orjson.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(header, dict) and "alg" in header


# -- images -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSource:
    """Where a task's image comes from: inline bytes, or a URL to download."""

    data: bytes | None = None
    url: str = ""
    downloader: Downloader | None = None  # the project's allow-list
    headers: tuple[tuple[str, str], ...] = ()
    fallback: str | None = None  # Label Studio's other path for an upload
    key: str = ""  # what RememberedUrls knows it by: the URL, and whose token fetched it
    via_label_studio: bool = False


@dataclass
class Counters:
    """This surface's own counts, for GET /labelstudio/metrics."""

    predictions: int = 0
    downloads: int = 0
    download_bytes: int = 0
    remembered: int = 0  # clicks whose image was found by its URL, without a download


class LabelStudioBackend:
    """The routes' state and steps: projects' setups, remembered URLs, downloads."""

    def __init__(self, settings: Settings, admission: Admission) -> None:
        self.settings = settings
        self.admission = admission
        self.projects = Projects()
        self.urls = RememberedUrls()
        self.counters = Counters()
        self._pinned_url = _http_url(settings.label_studio_url)
        self._global = Downloader(settings, hosts=(self._pinned_url,) if self._pinned_url else ())
        self._in_flight: dict[str, asyncio.Future[bytes]] = {}

    # -- setup ----------------------------------------------------------------------------

    def setup(self, body: dict[str, Any], segmenter: Segmenter) -> str:
        project = str(body.get("project") or "")
        schema = body.get("schema")
        if schema is not None:
            schema = _text(schema, "schema")
            config = parse_label_config(schema)
            if not config.brush_images():
                raise bad_request(
                    "the label config has no BrushLabels on an Image: sam2-server answers "
                    "interactive clicks as brush masks (add <BrushLabels name=... toName=...>)"
                )
        extra = body.get("extra_params") or {}
        extra = _object(extra, "extra_params")
        model_id = extra.get("model_id")
        model = (
            check_model(segmenter, _text(model_id, "extra_params.model_id")) if model_id else None
        )
        automatic = self._automatic_params(extra.get("automatic"))
        hostname = self._pinned_url or _http_url(body.get("hostname"))
        token = body.get("access_token")
        setup = ProjectSetup(
            hostname=hostname,
            access_token=token if isinstance(token, str) and token else None,
            model=model,
            label_config=schema,
            automatic=automatic,
            downloader=Downloader(self.settings, hosts=(hostname,) if hostname else ()),
        )
        if project:
            self.projects.put(project, setup)
        return model or segmenter.default_model_id

    def _automatic_params(self, value: Any) -> AutomaticParams:
        """The library's defaults, or the project's `extra_params.automatic`, within bounds."""
        fields = _object(value, "extra_params.automatic") if value is not None else {}
        known = set(AutomaticParams.__dataclass_fields__)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise bad_request(f"extra_params.automatic: unknown parameters {', '.join(unknown)}")
        try:
            params = AutomaticParams(**fields)
        except TypeError as exc:
            raise bad_request(f"extra_params.automatic: {exc}") from None
        return check_automatic(params, automatic_limits(self.settings))

    # -- predict --------------------------------------------------------------------------

    async def predict(
        self, request: Request, segmenter: Segmenter, body: dict[str, Any]
    ) -> dict[str, Any]:
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise bad_request("tasks must be a list of task objects")
        project_id = str(body.get("project") or "")
        project = self.projects.get(project_id) if project_id else None
        model = start_tool_request(request, segmenter, project.model if project else None)
        version = model
        params = _object(body.get("params") or {}, "params")
        context = params.get("context")
        record = request_record(request)
        record.details.update(labelstudio_tasks=len(tasks), interactive=context is not None)
        if context is None:
            if self.settings.label_studio_preannotate != "automatic" or not tasks:
                return {"results": []}
            config = self._config(body, project)
            results = [
                await self._automatic(request, segmenter, model, project, config, task, version)
                for task in tasks
            ]
            return {"results": results}
        click = read_click(_object(context, "params.context"))
        if click is None or (not click.points and click.box is None):
            return {"results": [{"result": [], "score": 0.0, "model_version": version}]}
        if not tasks:
            raise bad_request("tasks is empty: an interactive click needs its task")
        config = self._config(body, project)
        prompt = await run_in_threadpool(click.prompt, self.settings)
        image = config.images.get(click.to_name)
        if image is None:
            raise bad_request(f"the label config has no Image named {click.to_name!r}")
        brush, label = _brush_for(config, image.name, click.label)
        source = self._source(_task_image(tasks[0], image, click.item_index), project, tasks[0])
        info, prediction = await self._segment(request, segmenter, model, source, prompt)
        if (info.width, info.height) != (click.width, click.height):
            raise bad_request(
                f"Label Studio shows this image at {click.width}x{click.height} but its file is "
                f"{info.width}x{info.height} (an EXIF orientation?); masks would not line up"
            )
        best = prediction.masks[0] > 0
        rle = await run_in_threadpool(mask2rle, best)
        self.counters.predictions += 1
        region = _brush_region(brush.name, image.name, info, rle, label)
        if click.item_index is not None:
            region["item_index"] = click.item_index
        # As the native API writes a float32 score: its shortest decimal form.
        score = float(str(np.float32(prediction.scores[0])))
        return {"results": [{"result": [region], "score": score, "model_version": version}]}

    def _config(self, body: dict[str, Any], project: ProjectSetup | None) -> LabelConfig:
        text = body.get("label_config")
        if text is None and project is not None:
            text = project.label_config
        if text is None:
            raise bad_request("label_config is missing (Label Studio sends it with /predict)")
        return parse_label_config(_text(text, "label_config"))

    async def _segment(
        self,
        request: Request,
        segmenter: Segmenter,
        model: str,
        source: ImageSource,
        prompt: Prompt,
    ) -> tuple[ImageInfo, Any]:
        info, data = await self._image(request, segmenter, model, source)
        admission = self.admission
        try:
            return await segment_image_id(
                request, segmenter, admission, model, info.image_id, prompt
            )
        except ImageNotCached:  # evicted since: encode again (downloading again if need be)
            if data is None:
                data = await self._download(request, source)
            info = await add_image_bytes(request, segmenter, admission, model, data)
            self.urls.put(model, source.key, info.image_id)
            return await segment_image_id(
                request, segmenter, admission, model, info.image_id, prompt
            )

    async def _image(
        self, request: Request, segmenter: Segmenter, model: str, source: ImageSource
    ) -> tuple[ImageInfo, bytes | None]:
        """The image's embedding: found by its remembered URL, or downloaded and encoded."""
        record = request_record(request)
        if source.data is None:
            image_id = self.urls.get(model, source.key)
            if image_id is not None:
                info = await run_in_threadpool(segmenter.find_image, model, image_id)
                if info is not None:
                    self.counters.remembered += 1
                    record.details["url_remembered"] = True
                    return info, None
        data = source.data if source.data is not None else await self._download(request, source)
        info = await add_image_bytes(request, segmenter, self.admission, model, data)
        if source.data is None:
            self.urls.put(model, source.key, info.image_id)
        return info, data

    async def _download(self, request: Request, source: ImageSource) -> bytes:
        """The URL's bytes; one download for concurrent clicks on the same URL."""
        pending = self._in_flight.get(source.key)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(request, source))
            self._in_flight[source.key] = pending
            pending.add_done_callback(lambda done: self._forget(source.key, done))
        return await asyncio.shield(pending)

    def _forget(self, key: str, done: asyncio.Future[bytes]) -> None:
        if self._in_flight.get(key) is done:
            del self._in_flight[key]
        if not done.cancelled():
            done.exception()  # retrieved: a failure nobody awaited is not logged as lost

    async def _fetch(self, request: Request, source: ImageSource) -> bytes:
        downloader = source.downloader or self._global
        started = time.perf_counter()
        headers = dict(source.headers)
        try:
            try:
                data = await downloader.fetch(source.url, headers)
            except ServiceError as first:
                if source.fallback is None or first.kind is not ErrorKind.BAD_INPUT:
                    raise
                try:
                    data = await downloader.fetch(source.fallback, headers)
                except ServiceError:
                    raise first from None
        except ServiceError as exc:
            if source.via_label_studio and exc.kind is ErrorKind.BAD_INPUT:
                raise bad_request(
                    f"{exc.message} (a Label Studio file, fetched with the project's token: "
                    "check LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or that legacy API tokens "
                    "are enabled in Label Studio's organization settings)"
                ) from None
            raise
        record = request_record(request)
        record.stages["download"] = time.perf_counter() - started
        record.details["downloaded_bytes"] = len(data)
        self.counters.downloads += 1
        self.counters.download_bytes += len(data)
        return data

    def _source(self, raw: str, project: ProjectSetup | None, task: dict[str, Any]) -> ImageSource:
        """Where the task's image is: inline (data: URL), on Label Studio, or at its URL."""
        if raw.startswith("data:"):
            return ImageSource(data=self._data_url(raw))
        host = project.hostname if project is not None else self._pinned_url
        token = self.settings.label_studio_api_key or (project.access_token if project else None)
        downloader = project.downloader if project is not None else self._global
        if raw.startswith("upload/") or raw.startswith("/upload/"):
            raw = "/data/" + raw.lstrip("/")
        cloud = raw.startswith(CLOUD_SCHEMES)
        fallback = None
        if raw.startswith("/") or cloud:
            if host is None:
                raise bad_request(
                    "this task's image is a Label Studio path, and this server does not know "
                    "Label Studio's URL for the project: set LABEL_STUDIO_URL (and "
                    "LABEL_STUDIO_API_KEY), or reconnect the model in the project's settings "
                    "so that Label Studio calls /setup again"
                )
            if cloud:
                task_id = task.get("id")
                if isinstance(task_id, bool) or not isinstance(task_id, int):
                    raise bad_request("a cloud storage image needs the task's integer id")
                encoded = base64.urlsafe_b64encode(raw.encode()).decode()
                url = f"{host}/tasks/{task_id}/presign/?fileuri={encoded}"
            else:
                url = host + raw
                if raw.startswith("/data/upload/"):
                    filepath = quote(raw[len("/data/") :], safe="/")
                    fallback = f"{host}/storage-data/uploaded/?filepath={filepath}"
        elif raw.startswith(("http://", "https://")):
            url = raw
        else:
            scheme = raw.partition(":")[0] if ":" in raw[:20] else ""
            kind = f"a {scheme}: URL" if scheme else "not a URL"
            raise bad_request(
                f"the task's image is {kind}; expected http(s), a Label Studio upload or "
                "storage path, or a data: URL"
            )
        headers: tuple[tuple[str, str], ...] = ()
        same_host = host is not None and urlsplit(url).netloc == urlsplit(host).netloc
        if token and same_host:
            scheme_name = "Bearer" if _is_jwt(token) else "Token"
            headers = (("Authorization", f"{scheme_name} {token}"),)
        # Whose token fetched it is part of the key: another token may not see the file.
        scope = hashlib.sha256(token.encode()).hexdigest()[:16] if token and headers else ""
        return ImageSource(
            url=url,
            downloader=downloader,
            key=f"{scope}|{url}",
            headers=headers,
            fallback=fallback,
            via_label_studio=same_host,
        )

    def _data_url(self, raw: str) -> bytes:
        header, comma, payload = raw.partition(",")
        if not comma:
            raise bad_request("the task's data: URL has no ',' before its data")
        limit = self.settings.download_max_bytes
        base64_encoded = header.lower().endswith(";base64")
        # Before decoding: base64 is 4 characters per 3 bytes, percent-encoding at most 3 per byte.
        if len(payload) > (limit * 4 // 3 + 4 if base64_encoded else 3 * limit):
            raise _too_large_inline(limit)
        try:
            if base64_encoded:
                data = base64.b64decode(payload.strip(), validate=False)
            else:
                data = unquote_to_bytes(payload)
        except (binascii.Error, ValueError):
            raise bad_request("the task's data: URL is not valid base64") from None
        if len(data) > limit:
            raise _too_large_inline(limit)
        return data

    # -- automatic pre-annotation ------------------------------------------------------------

    async def _automatic(
        self,
        request: Request,
        segmenter: Segmenter,
        model: str,
        project: ProjectSetup | None,
        config: LabelConfig,
        task: dict[str, Any],
        version: str,
    ) -> dict[str, Any]:
        """One task's automatic masks, each a brushlabels region (the control's first label)."""
        targets = config.brush_images()
        if not targets:
            raise bad_request("the label config has no BrushLabels on an Image")
        image = targets[0]
        brush, label = _brush_for(config, image.name, None)
        source = self._source(_task_image(task, image, 0 if image.listed else None), project, task)
        info, _ = await self._image(request, segmenter, model, source)
        params = project.automatic if project is not None else self._automatic_params(None)
        timings = Timings()

        def work(cancelled: Callable[[], bool]) -> tuple[ImageInfo, list[MaskRecord]]:
            return segmenter.automatic_masks(model, info.image_id, params, Work(timings, cancelled))

        # The decoder's batch, its candidates upsampled to the image: admission's estimate of
        # `points_per_batch` objects (the native automatic route refines this; see its module).
        points = min(params.points_per_batch, params.points_per_side**2)
        candidates = 3 if params.multimask_output else 1
        cost = estimate_work_bytes(points, candidates, info.height, info.width)
        (found, records), ticket = await run_admitted(request, self.admission, cost, timings, work)
        try:
            regions = await run_in_threadpool(
                _automatic_regions, records, brush, image, label, found, self.settings
            )
        finally:
            ticket.release()
        score = float(np.mean([r.predicted_iou for r in records])) if records else 0.0
        self.counters.predictions += 1
        return {"result": regions, "score": score, "model_version": version}


def _too_large_inline(limit: int) -> ServiceError:
    return ServiceError(
        ErrorKind.TOO_LARGE,
        f"the task's data: URL holds more than this server's download limit of {limit} "
        "bytes (DOWNLOAD_MAX_BYTES)",
    )


def _task_image(task: dict[str, Any], image: ImageTag, item_index: int | None) -> str:
    data = _object(task.get("data"), "task.data")
    value = data.get(image.key)
    if value is None:
        raise bad_request(f"the task has no data.{image.key} (the Image {image.name!r} shows it)")
    if isinstance(value, list):
        index = item_index or 0
        if not 0 <= index < len(value):
            raise bad_request(f"item_index {index} is outside data.{image.key}'s {len(value)}")
        value = value[index]
    return _text(value, f"data.{image.key}")


def _automatic_regions(
    records: list[MaskRecord],
    brush: BrushControl,
    image: ImageTag,
    label: str,
    info: ImageInfo,
    settings: Settings,
) -> list[dict[str, Any]]:
    regions = []
    size = 0
    for record in records:
        rle = mask2rle(rle_to_mask(record.segmentation))
        size += 4 * len(rle)  # JSON digits and commas, at most
        if size > settings.max_response_bytes:
            raise ServiceError(
                ErrorKind.TOO_LARGE,
                f"{len(records)} automatic masks are more than this server's answer limit of "
                f"{settings.max_response_bytes} bytes (MAX_RESPONSE_BYTES); raise "
                "pred_iou_thresh or lower points_per_side in extra_params.automatic",
            )
        region = _brush_region(brush.name, image.name, info, rle, label)
        region["score"] = record.predicted_iou
        regions.append(region)
    return regions


# -- the routes ---------------------------------------------------------------------------


def build_labelstudio_router(settings: Settings, admission: Admission) -> APIRouter:
    router = APIRouter(prefix=LABEL_STUDIO_PATH, tags=["label studio"])
    backend = LabelStudioBackend(settings, admission)

    async def answer(step: Callable[[], Awaitable[dict[str, Any]]]) -> Response:
        try:
            return json_response(await step())
        except ServiceError as exc:
            return _error(exc)

    @router.get("/health", summary="Label Studio's health check (any 2xx is healthy)")
    @router.get("", include_in_schema=False)
    @router.get("/", include_in_schema=False)
    async def health(segmenter: SegmenterDep) -> Response:
        if segmenter.status == "ERROR":
            message = segmenter.error or "no model could be loaded"
            return _error(ServiceError(ErrorKind.UNAVAILABLE, message))
        return json_response(
            {"status": "UP", "model_class": MODEL_CLASS, "model_status": segmenter.status}
        )

    @router.post("/setup", summary="Label Studio connects a project: the model version")
    async def setup(request: Request, segmenter: SegmenterDep) -> Response:
        async def step() -> dict[str, Any]:
            body = await _json_object(request)
            return {"model_version": backend.setup(body, segmenter)}

        return await answer(step)

    @router.post("/predict", summary="Interactive masks for Label Studio's smart regions")
    async def predict(request: Request, segmenter: SegmenterDep) -> Response:
        async def step() -> dict[str, Any]:
            body = await _json_object(request)
            return await backend.predict(request, segmenter, body)

        return await answer(step)

    @router.post("/webhook", summary="Label Studio's events: acknowledged, nothing is trained")
    async def webhook() -> Response:
        return json_response({"status": "ok", "detail": "sam2-server does not train"})

    @router.post("/train", summary="Training is not offered")
    async def train() -> Response:
        return _error(bad_request("sam2-server does not train: it serves SAM2 weights as they are"))

    @router.get("/versions", summary="The model versions a project can use")
    async def versions(request: Request, segmenter: SegmenterDep) -> Response:
        async def step() -> dict[str, Any]:
            body = await _json_object(request)
            setup = backend.projects.get(str(body.get("project") or ""))
            model = setup.model if setup and setup.model else segmenter.default_model_id
            return {"versions": [model]}

        return await answer(step)

    @router.get("/metrics", summary="This surface's counters (downloads, remembered URLs)")
    async def metrics() -> Response:
        counters = backend.counters
        return json_response(
            {
                "predictions": counters.predictions,
                "downloads": counters.downloads,
                "download_bytes": counters.download_bytes,
                "remembered_urls": counters.remembered,
                "projects": len(backend.projects),
            }
        )

    return router


def _brush_region(
    from_name: str, to_name: str, info: ImageInfo, rle: list[int], label: str | None
) -> dict[str, Any]:
    """One mask as Label Studio's brush region: `mask2rle`'s RLE, the control it belongs to."""
    return {
        "id": uuid.uuid4().hex[:10],
        "type": "brushlabels",
        "from_name": from_name,
        "to_name": to_name,
        "original_width": info.width,
        "original_height": info.height,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": rle, "brushlabels": [label] if label else []},
    }

"""`POST /v1/images/{id}/automatic-masks`: the library's own generator, on the cached embedding.

Every answer is compared with `SAM2AutomaticMaskGenerator(...,
output_mode="coco_rle").generate()` on the same checkpoint and pixels:
the same records in the same order, floats exactly equal (both sides run
the same float32 computations on the same features; JSON carries each
value as the shortest text that reads back as the same double).

Random weights give noisy masks that the default thresholds drop, so the
parity cases relax them (pred_iou_thresh 0, stability_score_thresh 0,
box_nms_thresh 1) to keep many masks, and use a small image and a few
points: the mask decoder, not the image size, is the cost on CPU.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import io
import json
import threading
from functools import cache

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools import mask as coco_mask
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

from sam2_server.api import create_app
from sam2_server.api.admission import estimate_work_bytes
from sam2_server.api.automatic import DECODER_BYTES_PER_POINT, automatic_work_ceiling
from sam2_server.codecs.polygons import rasterize
from sam2_server.config import machine_memory_bytes
from sam2_server.domain import AutomaticParams, Work
from sam2_server.engine.automatic import small_region_filter_available
from sam2_server.errors import Cancelled
from sam2_server.prompts import automatic_batches
from tests.api.raw_asgi import leave_mid_answer
from tests.api.test_errors import assert_error
from tests.codecs.test_polygons import assert_within_tolerance
from tests.conftest import image_bytes

WIDTH, HEIGHT = 96, 64
TOKEN = "automatic-token"
RELAXED = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
RECORD_KEYS = [
    "segmentation",
    "area",
    "bbox",
    "predicted_iou",
    "point_coords",
    "stability_score",
    "crop_box",
]


def small_png() -> bytes:
    buffer = io.BytesIO()
    photo = Image.open(io.BytesIO(image_bytes("groceries.jpg"))).convert("RGB")
    photo.resize((WIDTH, HEIGHT)).save(buffer, format="PNG")
    return buffer.getvalue()


DATA = small_png()
IMAGE_ID = hashlib.sha256(DATA).hexdigest()
PIXELS = np.array(Image.open(io.BytesIO(DATA)).convert("RGB"))


@pytest.fixture(scope="module")
def uploaded(client) -> str:
    response = client.post("/v1/images", files={"image": ("small.png", DATA, "image/png")})
    assert response.status_code == 200, response.text
    return response.json()["image_id"]


@pytest.fixture(scope="module")
def library(reference_predictor):
    """The library's records for some parameters, computed once per module."""

    @cache
    def records(**params) -> list[dict]:
        generator = SAM2AutomaticMaskGenerator(
            reference_predictor.model, output_mode="coco_rle", **params
        )
        return generator.generate(PIXELS)

    return records


def automatic(client, image_id: str = IMAGE_ID, **body) -> dict:
    response = client.post(f"/v1/images/{image_id}/automatic-masks", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["image_id"], answer["width"], answer["height"]) == (IMAGE_ID, WIDTH, HEIGHT)
    return answer


def assert_same_records(masks: list[dict], want: list[dict]) -> None:
    assert len(masks) == len(want)
    for got, expected in zip(masks, want, strict=True):
        assert list(got) == RECORD_KEYS
        assert got == expected


def test_records_equal_the_librarys_generate(client, uploaded, library, reduced_engine):
    params = {"points_per_side": 3, **RELAXED}
    before = reduced_engine.encoder.encoded_images
    answer = automatic(client, uploaded, **params)
    want = library(**params)
    assert len(want) >= 20  # 9 points x 3 candidates, none dropped
    assert_same_records(answer["masks"], want)
    assert answer["model_id"] == reduced_engine.default_model_id
    assert reduced_engine.encoder.encoded_images == before  # the cached embedding, no encoder run
    segmentation = answer["masks"][0]["segmentation"]
    assert segmentation["size"] == [HEIGHT, WIDTH]
    assert isinstance(segmentation["counts"], str)


def test_png_masks_are_the_librarys_masks(client, uploaded, library):
    params = {"points_per_side": 2, **RELAXED}
    answer = automatic(client, uploaded, **params, mask_format="png")
    want = library(**params)
    assert len(want) == 12
    for got, expected in zip(answer["masks"], want, strict=True):
        png = Image.open(io.BytesIO(base64.b64decode(got["segmentation"])))
        assert png.mode == "L"
        pixels = np.array(png)
        assert set(np.unique(pixels)) <= {0, 255}
        rle = {**expected["segmentation"], "counts": expected["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(pixels == 255, coco_mask.decode(rle).astype(bool))
        assert {**got, "segmentation": None} == {**expected, "segmentation": None}


def test_other_thresholds_cost_no_encoder_run(client, uploaded, library, reduced_engine):
    params = {"points_per_side": 2, **RELAXED}
    before = reduced_engine.encoder.encoded_images
    first = automatic(client, uploaded, **params)["masks"]
    assert_same_records(first, library(**params))
    threshold = float(np.median([m["predicted_iou"] for m in first]))
    second = automatic(client, uploaded, **{**params, "pred_iou_thresh": threshold})["masks"]
    # Without NMS (box_nms_thresh 1) a higher threshold keeps a subset, in order.
    assert second == [m for m in first if m["predicted_iou"] > threshold]
    assert 0 < len(second) < len(first)
    assert reduced_engine.encoder.encoded_images == before


def test_crop_layers_equal_the_library(client, uploaded, library, reduced_engine):
    params = {
        "points_per_side": 2,
        "crop_n_layers": 1,
        "crop_n_points_downscale_factor": 2,
        "crop_nms_thresh": 1.0,
        **RELAXED,
    }
    before = reduced_engine.encoder.encoded_images
    answer = automatic(client, uploaded, **params)
    assert_same_records(answer["masks"], library(**params))
    assert answer["masks"]
    # The whole image from the cache; only the 4 crops of layer 1 are encoded.
    assert reduced_engine.encoder.encoded_images == before + 4


def test_m2m_and_single_mask_equal_the_library(client, uploaded, library):
    params = {"points_per_side": 2, "use_m2m": True, "multimask_output": False, **RELAXED}
    answer = automatic(client, uploaded, **params)
    want = library(**params)
    assert len(want) == 4
    assert_same_records(answer["masks"], want)


def test_min_mask_region_area_is_the_librarys_and_says_when_skipped(
    client, uploaded, library, reduced_engine
):
    """The records are generate()'s either way; without sam2's CUDA extension the library
    skips the filtering (with a Python warning), and the answer says so."""
    params = {"points_per_side": 2, "min_mask_region_area": 20, **RELAXED}
    answer = automatic(client, uploaded, **params)
    assert_same_records(answer["masks"], library(**params))
    if small_region_filter_available(reduced_engine.compute.device):  # a CUDA build of sam2
        assert "warnings" not in answer
    else:
        (warning,) = answer["warnings"]
        assert "min_mask_region_area was not applied" in warning
    assert "warnings" not in automatic(client, uploaded, **{**params, "min_mask_region_area": 0})


def test_default_parameters_are_the_librarys(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    properties = schema["AutomaticMasksRequest"]["properties"]
    defaults = {name: spec.get("default") for name, spec in properties.items()}
    signature = inspect.signature(SAM2AutomaticMaskGenerator.__init__).parameters.values()
    library_defaults = {
        p.name: p.default
        for p in signature
        if p.default is not p.empty and p.name not in ("point_grids", "output_mode")
    }
    assert defaults == {
        **library_defaults,
        "model_id": "",
        "mask_format": "rle",
        "polygon_epsilon": 0.0,
    }


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"points_per_side": 0}, "points_per_side must be at least 1"),
        ({"points_per_side": 65}, "MAX_POINTS_PER_SIDE"),
        ({"points_per_batch": 0}, "points_per_batch must be at least 1"),
        ({"points_per_batch": 257}, "MAX_POINTS_PER_BATCH"),
        ({"crop_n_layers": -1}, "crop_n_layers must be at least 0"),
        ({"crop_n_layers": 3}, "MAX_CROP_LAYERS"),
        ({"pred_iou_thresh": 1.5}, "pred_iou_thresh must be between 0 and 1"),
        ({"stability_score_thresh": -0.1}, "stability_score_thresh"),
        ({"box_nms_thresh": 2}, "box_nms_thresh"),
        ({"crop_nms_thresh": -1}, "crop_nms_thresh"),
        ({"stability_score_offset": -1}, "stability_score_offset must be between 0 and 1e+06"),
        ({"stability_score_offset": 1e7}, "stability_score_offset must be between 0 and 1e+06"),
        ({"mask_threshold": 1e40}, "mask_threshold must be between -1e+06 and 1e+06"),
        ({"mask_threshold": -2e6}, "mask_threshold"),
        ({"crop_overlap_ratio": 1.0}, "crop_overlap_ratio"),
        ({"crop_overlap_ratio": -0.5}, "crop_overlap_ratio"),
        ({"crop_n_points_downscale_factor": 0}, "crop_n_points_downscale_factor"),
        (
            {"points_per_side": 3, "crop_n_layers": 1, "crop_n_points_downscale_factor": 4},
            "without points",
        ),
        ({"points_per_side": 64, "crop_n_layers": 2}, "MAX_AUTOMATIC_POINTS"),
        ({"min_mask_region_area": -1}, "min_mask_region_area must be at least 0"),
        ({"min_mask_region_area": 2**40}, "min_mask_region_area"),
    ],
)
def test_parameters_out_of_range_are_400_naming_them(client, uploaded, body, fragment):
    response = client.post(f"/v1/images/{uploaded}/automatic-masks", json=body)
    assert_error(response, 400, fragment)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (b'{"mask_threshold": NaN}', "mask_threshold"),
        (b'{"pred_iou_thresh": Infinity}', "pred_iou_thresh"),
        (b'{"stability_score_offset": -Infinity}', "stability_score_offset"),
    ],
)
def test_non_finite_numbers_are_400(client, uploaded, text, field):
    response = client.post(
        f"/v1/images/{uploaded}/automatic-masks",
        content=text,
        headers={"content-type": "application/json"},
    )
    assert_error(response, 400, field, "finite")


def test_bad_json_and_bad_types_are_422(client, uploaded):
    path = f"/v1/images/{uploaded}/automatic-masks"
    bad_json = client.post(path, content=b"{", headers={"content-type": "application/json"})
    assert bad_json.status_code == 422
    assert client.post(path, json={"mask_format": "gif"}).status_code == 422
    assert client.post(path, json={"points_per_side": "many"}).status_code == 422
    assert client.post(path, json={"use_m2m": "maybe"}).status_code == 422


@pytest.mark.parametrize(
    "body",
    [{"points_per_sid": 8}, {"points_per_side": 8, "mask_treshold": 0.5, "extra": None}],
)
def test_unknown_fields_are_422_naming_them(client, uploaded, body):
    """A misspelt parameter must not run the defaults silently."""
    response = client.post(f"/v1/images/{uploaded}/automatic-masks", json=body)
    assert response.status_code == 422
    unknown = {name for name in body if name != "points_per_side"}
    named = {
        error["loc"][-1]
        for error in response.json()["detail"]
        if error["type"] == "extra_forbidden"
    }
    assert named == unknown


def test_over_the_time_budget_is_400_with_the_estimate(
    client, uploaded, reduced_engine, monkeypatch
):
    from sam2_server.domain import AutomaticParams
    from sam2_server.engine.pacing import Pacer, plan_of

    pacer = Pacer(budget_s=10.0)
    pacer.observe_batch(reduced_engine.default_model_id, units=1.0, seconds=0.5)  # measured
    monkeypatch.setattr(reduced_engine, "pacer", pacer)
    path = f"/v1/images/{uploaded}/automatic-masks"
    response = client.post(path, json={"points_per_side": 8})  # 64 points: over 30 s
    info = client.get(f"/v1/images/{uploaded}").json()
    plan = plan_of(AutomaticParams(points_per_side=8), (info["height"], info["width"]))
    expected = f"would take about {plan.units * 0.5:.0f} s"
    assert_error(response, 400, expected, "AUTOMATIC_TIME_BUDGET", "64 grid points")
    assert client.post(path, json={"points_per_side": 2}).status_code == 200  # about 2 s


def test_unknown_image_is_the_segment_routes_404(client):
    for image_id in ("ab" * 32, "not-a-hash"):
        response = client.post(f"/v1/images/{image_id}/automatic-masks", json={})
        assert_error(response, 404, "upload it again with POST /v1/images")
    response = client.post(f"/v1/images/{IMAGE_ID}/automatic-masks", json={"model_id": "nope"})
    assert_error(response, 400, "nope")


def test_an_answer_over_the_response_limit_is_400(reduced_settings, reduced_engine, uploaded):
    app = create_app(reduced_settings.with_(max_response_bytes=2000), reduced_engine, load=False)
    with TestClient(app) as client:
        response = client.post(
            f"/v1/images/{uploaded}/automatic-masks", json={"points_per_side": 1, **RELAXED}
        )
        assert_error(response, 400, "3 masks", "MAX_RESPONSE_BYTES", "pred_iou_thresh")
        assert app.state.admission.in_use == 0  # the ticket was given back


def test_a_batch_over_the_work_ceiling_is_400_naming_the_batch_that_fits(
    reduced_settings, reduced_engine, uploaded
):
    """The decoder's 28 MiB per point dominates on this small image: 20 points fit."""
    ceiling = 20 * DECODER_BYTES_PER_POINT + estimate_work_bytes(0, 0, HEIGHT, WIDTH)
    settings = reduced_settings.with_(max_automatic_work_bytes=ceiling)
    app = create_app(settings, reduced_engine, load=False)
    path = f"/v1/images/{uploaded}/automatic-masks"
    with TestClient(app) as client:
        response = client.post(path, json={"points_per_side": 8, **RELAXED})
        assert_error(
            response,
            400,
            "points_per_batch 64 with multimask_output on this 96x64 image",
            "MAX_AUTOMATIC_WORK_BYTES",
            "use points_per_batch 20 or less",
        )
        fitting = client.post(path, json={"points_per_side": 8, "points_per_batch": 20, **RELAXED})
        assert fitting.status_code == 200, fitting.text
        assert app.state.admission.in_use == 0


def test_the_work_ceiling_defaults_to_half_the_memory_or_the_budget(reduced_settings):
    half = machine_memory_bytes() // 2
    assert automatic_work_ceiling(reduced_settings, 1) == half
    assert automatic_work_ceiling(reduced_settings, half + 1) == half + 1
    chosen = reduced_settings.with_(max_automatic_work_bytes=12345)
    assert automatic_work_ceiling(chosen, half + 1) == 12345


def test_the_route_needs_the_token(reduced_settings, reduced_engine):
    app = create_app(reduced_settings.with_(auth_token=TOKEN), reduced_engine, load=False)
    path = "/v1/images/" + "ef" * 32 + "/automatic-masks"
    with TestClient(app) as client:
        assert_error(client.post(path, json={}), 401, "Invalid bearer token.")
        authorised = client.post(path, json={}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert_error(authorised, 404, "upload it again")


def test_typed_in_openapi_and_labelled_in_metrics(client, uploaded):
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/images/{image_id}/automatic-masks"]["post"]
    assert operation["operationId"] == "automaticMasks"
    assert operation["tags"] == ["images"]
    assert operation["security"] == [{"HTTPBearer": []}]
    body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.endswith("/AutomaticMasksRequest")
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/AutomaticMasksResponse")
    assert {"400", "401", "404", "503"} <= set(operation["responses"])
    components = schema["components"]["schemas"]
    assert list(components["AutomaticMask"]["properties"]) == RECORD_KEYS
    client.post(f"/v1/images/{uploaded}/automatic-masks", json={"points_per_side": 0})
    metrics = client.get("/metrics").text
    assert 'route="/v1/images/{id}/automatic-masks",status="400"' in metrics


def test_polygon_masks_draw_back_to_the_rle_masks(client, uploaded, library):
    params = {"points_per_side": 2, **RELAXED}
    want = library(**params)
    exact = automatic(client, uploaded, **params, mask_format="polygon")["masks"]
    simple = automatic(client, uploaded, **params, mask_format="polygon", polygon_epsilon=1.5)
    assert len(exact) == len(want) == len(simple["masks"]) == 12
    for got, simplified, expected in zip(exact, simple["masks"], want, strict=True):
        segmentation = got["segmentation"]
        assert list(segmentation) == ["size", "polygons"]
        assert segmentation["size"] == [HEIGHT, WIDTH]
        rle = {**expected["segmentation"], "counts": expected["segmentation"]["counts"].encode()}
        mask = coco_mask.decode(rle)
        np.testing.assert_array_equal(rasterize(segmentation["polygons"], HEIGHT, WIDTH), mask)
        assert {**got, "segmentation": None} == {**expected, "segmentation": None}
        drawn = rasterize(simplified["segmentation"]["polygons"], HEIGHT, WIDTH)
        assert_within_tolerance(drawn, mask, 1.5)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"mask_format": "polygon", "polygon_epsilon": -1}, "between 0 and 1000"),
        ({"mask_format": "polygon", "polygon_epsilon": 1e12}, "between 0 and 1000"),
        ({"polygon_epsilon": 3}, 'needs mask_format "polygon"'),
        ({"mask_format": "png", "polygon_epsilon": 0.1}, 'needs mask_format "polygon"'),
    ],
)
def test_a_bad_polygon_epsilon_is_400_naming_it(client, uploaded, body, fragment):
    response = client.post(f"/v1/images/{uploaded}/automatic-masks", json=body)
    assert_error(response, 400, "polygon_epsilon", fragment)
    nan = client.post(
        f"/v1/images/{uploaded}/automatic-masks",
        content=b'{"mask_format": "polygon", "polygon_epsilon": NaN}',
        headers={"content-type": "application/json"},
    )
    assert_error(nan, 400, "polygon_epsilon")


# -- progress: Accept: application/x-ndjson --------------------------------------------------

NDJSON = {"Accept": "application/x-ndjson"}


def ndjson_lines(response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.text.endswith("\n")
    return [json.loads(line) for line in response.text.splitlines()]


@pytest.mark.parametrize(
    "params",
    [
        {"points_per_side": 4, "points_per_batch": 5},  # 16 points: 4 batches, the last short
        {"points_per_side": 2, "points_per_batch": 3, "crop_n_layers": 1},  # 2 + 4 crops x 2
        {"points_per_side": 2, "mask_format": "png"},  # one batch
    ],
)
def test_progress_lines_then_the_plain_answer(client, uploaded, params):
    """A progress line after each batch of points (the image's and every crop's), counted
    against `automatic_batches`, then the result line: the plain answer, field for field."""
    body = {**params, **RELAXED}
    path = f"/v1/images/{uploaded}/automatic-masks"
    lines = ndjson_lines(client.post(path, json=body, headers=NDJSON))
    *progress, last = lines
    total = automatic_batches(
        AutomaticParams(**{k: v for k, v in params.items() if k != "mask_format"})
    )
    assert progress == [{"progress": {"done": n, "total": total}} for n in range(1, total + 1)]
    assert list(last) == ["result"]
    plain = automatic(client, uploaded, **body)
    assert last["result"] == plain
    assert plain["masks"]  # the result line is no empty shell


def test_ndjson_is_chosen_by_accept(client, uploaded):
    path = f"/v1/images/{uploaded}/automatic-masks"
    body = {"points_per_side": 1, **RELAXED}
    for accept in ("application/json", "*/*", "application/x-ndjson;q=0"):
        plain = client.post(path, json=body, headers={"Accept": accept})
        assert plain.headers["content-type"] == "application/json"
    for accept in ("application/json, application/x-ndjson", "Application/X-NDJSON; q=0.5"):
        lines = ndjson_lines(client.post(path, json=body, headers={"Accept": accept}))
        assert "result" in lines[-1]


def test_errors_before_the_first_line_keep_their_status(
    client, uploaded, reduced_engine, monkeypatch
):
    path = f"/v1/images/{uploaded}/automatic-masks"
    assert_error(
        client.post(path, json={"points_per_side": 0}, headers=NDJSON), 400, "points_per_side"
    )
    missing = client.post("/v1/images/" + "ab" * 32 + "/automatic-masks", json={}, headers=NDJSON)
    assert_error(missing, 404, "upload it again")
    # Refused by the time budget inside the work, before its first batch: still a 400.
    from sam2_server.engine.pacing import Pacer

    pacer = Pacer(budget_s=10.0)
    pacer.observe_batch(reduced_engine.default_model_id, units=1.0, seconds=0.5)
    monkeypatch.setattr(reduced_engine, "pacer", pacer)
    refused = client.post(path, json={"points_per_side": 8}, headers=NDJSON)
    assert_error(refused, 400, "AUTOMATIC_TIME_BUDGET")
    assert client.app.state.admission.in_use == 0


def test_an_error_after_the_first_line_is_an_error_line(reduced_settings, reduced_engine, uploaded):
    app = create_app(reduced_settings.with_(max_response_bytes=2000), reduced_engine, load=False)
    with TestClient(app) as client:
        body = {"points_per_side": 2, "points_per_batch": 2, **RELAXED}
        path = f"/v1/images/{uploaded}/automatic-masks"
        lines = ndjson_lines(client.post(path, json=body, headers=NDJSON))
        plain = client.post(path, json=body)
        assert_error(plain, 400, "MAX_RESPONSE_BYTES")
        assert lines[:-1] == [{"progress": {"done": n, "total": 2}} for n in (1, 2)]
        assert lines[-1] == {"error": {"status": 400, "msg": plain.json()["detail"]["msg"]}}
        assert app.state.admission.in_use == 0


def test_a_client_that_leaves_the_stream_stops_the_work(reduced_settings, reduced_engine, uploaded):
    """Disconnect after the first progress line (raw ASGI): the generation stops at its
    next batch, the admission is given back once it has, and the request is logged and
    counted as 499 (the answer never came), not 200."""
    counted = CountingSegmenter(reduced_engine)
    app = create_app(reduced_settings, counted, load=False)
    body = json.dumps({"points_per_side": 16, "points_per_batch": 4, **RELAXED}).encode()
    total = 64
    sent = leave_mid_answer(
        app,
        f"/v1/images/{uploaded}/automatic-masks",
        body,
        accept="application/x-ndjson",
        leave_after=lambda chunk: b"progress" in chunk,
        # the work ends at its next batch, then gives its memory back
        settled=lambda: app.state.admission.in_use == 0 and counted.ended.is_set(),
    )
    assert json.loads(sent[0]) == {"progress": {"done": 1, "total": total}}
    assert counted.ended.is_set()
    assert isinstance(counted.outcome, Cancelled)
    assert counted.batches <= 3 < total  # stopped within a batch or two of leaving
    assert app.state.admission.in_use == 0
    requests = app.state.metrics.requests
    route = "/v1/images/{id}/automatic-masks"
    assert requests.labels(route, "499")._value.get() == 1
    assert requests.labels(route, "200")._value.get() == 0


class CountingSegmenter:
    """The engine, counting automatic batches and noting how the generation ended."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.batches = 0
        self.outcome: BaseException | None = None
        self.ended = threading.Event()

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def automatic_masks(self, model_id, image_id, params, work):
        reported = work.progress

        def progress(points: int) -> None:
            self.batches += 1
            if reported is not None:
                reported(points)

        try:
            return self._engine.automatic_masks(
                model_id, image_id, params, Work(work.timings, work.cancelled, progress)
            )
        except BaseException as exc:
            self.outcome = exc
            raise
        finally:
            self.ended.set()

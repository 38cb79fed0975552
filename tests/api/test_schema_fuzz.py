"""Schemathesis over the app's own `/openapi.json`, in-process, with auth on.

Three fuzzers, each bounded (max_examples, no deadline, no shrinking,
derandomized so CI runs are repeatable). They drive schemathesis's strategies
with plain Hypothesis (`operation.as_strategy()` + `@given`) rather than
`schemathesis.pytest.from_fixture(...).parametrize()`: the app needs the session
`reduced_engine` fixture, and schemathesis 4.32.5's lazy (fixture) schema sets
`request.node._nodeid`, which pytest 9.2 no longer has.

- `test_schema_fuzz`: every operation, schemathesis's own generation (positive
  and negative cases). No answer is ever a 5xx, every status code is
  documented, every documented answer matches its schema (`HTTPError` for
  400/401/408/413/500/503, `HTTPValidationError` for 422, `MasksResponse` for
  200), bodies are JSON in the contract's error shape, 401 carries
  `WWW-Authenticate: Bearer`, 503 `Retry-After`, auth is enforced
  (`ignored_auth` re-sends without and with a wrong token), and
  schema-violating requests are rejected.
- `test_segment_fuzz_reaching_inference[kind]`: random uploads almost never
  decode as images and random strings almost never parse as prompts, so the
  first fuzzer rarely gets past validation. Here schemathesis generates the
  form, then the prompt fields are replaced by JSON of one kind (points, box,
  boxes, boxes with points, mask_input, nothing; or wrong shapes/values, or
  over MAX_POINTS/MAX_OBJECTS/MAX_TOTAL_POINTS), and the upload, 4 times in 5,
  by one of a few small real images. The same checks apply; and a valid prompt
  on a real image is a 200 (unless a coordinate is beyond +-1e6, where a 400
  is allowed) whose arrays have the shapes the prompt implies, are finite
  (NaN would reach the client as `null`), masks 0/1 without logits, scores
  best first; invalid kinds are a 400 whose message names a field sent.
- `test_segment_without_token_is_401`: any generated request without the token,
  or with a wrong one, is a 401 in the contract's shape.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sam2_server.api import create_app

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SEGMENT = "/segment-anything-2"

# Errors that carry the contract's `{"detail": {"msg": str}}` body.
MSG_ERRORS = {400, 401, 408, 413, 500, 503}

FUZZ_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    # No shrinking: each step re-runs inference and a failure already says what was sent.
    phases=[Phase.explicit, Phase.generate],
    report_multiple_bugs=False,
    suppress_health_check=list(HealthCheck),
)


def json_answer(ctx, response, case):
    """Every answer is JSON in the contract's shape for its status; 503 says when to retry.

    Except those with no body (204) or a stream of JSON lines (a propagation)."""
    content_type = response.headers.get("content-type", [""])[0]
    if response.status_code == 204 or content_type.startswith("application/x-ndjson"):
        return None
    assert content_type.startswith("application/json"), (
        f"{response.status_code} with content-type {content_type!r}: {response.content[:200]!r}"
    )
    body = json.loads(response.content)
    if response.status_code in MSG_ERRORS:
        assert set(body) == {"detail"}, body
        assert isinstance(body["detail"], dict), body
        assert set(body["detail"]) == {"msg"}, body
        assert isinstance(body["detail"]["msg"], str), body
    elif response.status_code == 422:
        assert isinstance(body["detail"], list), body
        for item in body["detail"]:
            assert {"type", "loc", "msg"} <= set(item), item
    if response.status_code == 503:
        assert "retry-after" in response.headers, response.headers
    if response.status_code == 401:
        assert response.headers.get("www-authenticate") == ["Bearer"], response.headers
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
    json_answer,
]


@pytest.fixture(scope="module")
def fuzz_app(reduced_settings, reduced_engine):
    app = create_app(reduced_settings.with_(auth_token=TOKEN), reduced_engine, load=False)
    with TestClient(app):  # run the lifespan once, as a server would
        yield app


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


def generated(api_schema, method: str, path: str):
    """Positive and negative cases for one operation, as schemathesis generates them."""
    operation = api_schema[path][method]
    return st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )


def without_auth(case) -> None:
    """Drop an Authorization header schemathesis generated (from the bearer scheme), so
    the one the test passes is the one sent."""
    if case.headers:
        case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}


OPERATIONS = [
    ("POST", SEGMENT, 60),
    ("GET", "/health", 10),
    ("GET", "/version", 10),
    ("GET", "/hardware/info", 10),
    ("GET", "/hardware/stats", 10),
    ("POST", "/v1/images", 30),
    ("GET", "/v1/images/{image_id}", 20),
    ("POST", "/v1/images/{image_id}/segment", 40),
    ("POST", "/v1/images/{image_id}/automatic-masks", 40),
    ("POST", "/v1/videos", 20),
    ("GET", "/v1/videos/{video_id}", 15),
    ("DELETE", "/v1/videos/{video_id}", 15),
    ("POST", "/v1/videos/{video_id}/prompts", 20),
    ("POST", "/v1/videos/{video_id}/propagate", 15),
    ("DELETE", "/v1/videos/{video_id}/objects/{object_id}", 15),
    ("POST", "/v1/videos/{video_id}/reset", 15),
    ("GET", "/v1/models", 10),
]

# The annotation tools' routes answer in each tool's own shapes (not the contract's
# HTTPError), so the contract's checks do not apply: they are fuzzed for what any
# hostile input must never get, a 5xx (test_tool_fuzz).
TOOL_OPERATIONS = [
    ("GET", "/labelstudio/health", 5),
    ("POST", "/labelstudio/setup", 25),
    ("POST", "/labelstudio/predict", 25),
    ("POST", "/labelstudio/webhook", 5),
    ("POST", "/labelstudio/train", 5),
    ("GET", "/labelstudio/versions", 5),
    ("GET", "/labelstudio/metrics", 5),
    ("GET", "/api/functions", 5),
    ("GET", "/api/functions/{name}", 10),
    ("POST", "/api/function_invocations", 25),
    ("GET", "/xanylabeling/health", 5),
    ("GET", "/xanylabeling/v1/models", 5),
    ("GET", "/xanylabeling/v1/models/{model_id}/info", 10),
    ("POST", "/xanylabeling/v1/predict", 25),
    ("POST", "/sam2/embed_image", 25),
    ("POST", "/sam2/segment_image", 25),
]


# -- 1: schemathesis alone -----------------------------------------------------------------


def test_every_operation_is_fuzzed(api_schema):
    """A new route must be added to OPERATIONS (or excluded here, with the reason)."""
    documented = {
        (method.upper(), path)
        for path, methods in api_schema.raw_schema["paths"].items()
        for method in methods
    }
    fuzzed = {(method, path) for method, path, _ in (*OPERATIONS, *TOOL_OPERATIONS)}
    assert documented == fuzzed


@pytest.mark.parametrize(("method", "path", "examples"), TOOL_OPERATIONS)
def test_tool_fuzz(api_schema, method, path, examples):
    """No generated request to a tool's route, valid or not, is answered with a 5xx."""

    @settings(FUZZ_SETTINGS, max_examples=examples)
    @given(case=generated(api_schema, method, path))
    def fuzz(case):
        case.call_and_validate(headers=AUTH, checks=[not_a_server_error])

    fuzz()


@pytest.mark.parametrize(("method", "path", "examples"), OPERATIONS)
def test_schema_fuzz(api_schema, method, path, examples):
    @settings(FUZZ_SETTINGS, max_examples=examples)
    @given(case=generated(api_schema, method, path))
    def fuzz(case):
        case.call_and_validate(headers=AUTH, checks=CHECKS)

    fuzz()


# -- 2: real images and JSON-shaped prompts ------------------------------------------------


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# A few small images, so after the first encode most requests are cache hits.
IMAGES = {
    "png64x48": _encoded(_noise((64, 48), 1), "PNG"),
    "png33x17": _encoded(_noise((33, 17), 2), "PNG"),
    "jpeg80x60": _encoded(_noise((80, 60), 3), "JPEG"),
    "gray1x1": _encoded(Image.new("L", (1, 1), 128), "PNG"),
}

# Coordinates: in and around the image, and far outside it. Past ~1e38 a coordinate
# scaled to the model's 1024 px input no longer fits a float32.
EXTREME = 1e6
numbers = st.one_of(
    st.integers(-100, 200),
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, -1, 0.5, 1e-320, 1e9, -1e9, 3e38, 1e308, -1e308]),
)
point = st.lists(numbers, min_size=2, max_size=2)
points = st.lists(point, min_size=1, max_size=6)
box = st.lists(numbers, min_size=4, max_size=4)
labels = st.sampled_from([0, 1])

# Rejected whatever the image (400 naming the field): wrong shapes, labels, non-finite
# numbers, ragged lists, non-arrays.
ODD_VALUES = [
    "[[1, 2, 3]]",
    "[1, 2]",
    "[[NaN, 1]]",
    "[[Infinity, 1]]",
    "[[1, 2], [3]]",
    "[2]",
    "[-1]",
    "[0.5]",
    "[[[1, 2]]]",
    "[]",
    "[[]]",
    "{}",
    '"x"',
    "1e999",
    "[true, false]",
    "[null]",
    "[[1, 2, 3, 4, 5]]",
    "[0, 0, 10]",
    json.dumps(np.zeros((1, 8, 8)).tolist()),
]

PROMPT_FIELDS = (
    "model_id",
    "point_coords",
    "point_labels",
    "box",
    "mask_input",
    "multimask_output",
    "return_logits",
    "normalize_coords",
    "mask_format",  # the native answer has its own test (test_native.py)
)
VALID_KINDS = ["points", "box", "boxes", "box+points", "boxes+points", "mask", "nothing"]
INVALID_KINDS = ["odd", "over"]


@st.composite
def prompt_fields(draw, kind: str):
    """Form fields as JSON text for one kind of prompt."""
    fields: dict[str, str] = {}
    if kind == "points":
        coords = draw(points)
        fields["point_coords"] = json.dumps(coords)
        fields["point_labels"] = json.dumps(
            draw(st.lists(labels, min_size=len(coords), max_size=len(coords)))
        )
    elif kind == "box":
        fields["box"] = json.dumps(draw(box))
    elif kind == "boxes":
        fields["box"] = json.dumps(draw(st.lists(box, min_size=1, max_size=5)))
    elif kind == "box+points":
        coords = draw(points)
        fields["box"] = json.dumps(draw(box))
        fields["point_coords"] = json.dumps(coords)
        fields["point_labels"] = json.dumps(
            draw(st.lists(labels, min_size=len(coords), max_size=len(coords)))
        )
    elif kind == "boxes+points":
        n = draw(st.integers(1, 4))
        per = draw(st.integers(1, 3))
        fields["box"] = json.dumps(draw(st.lists(box, min_size=n, max_size=n)))
        coords = draw(st.lists(st.lists(point, min_size=per, max_size=per), min_size=n, max_size=n))
        fields["point_coords"] = json.dumps(coords)
        fields["point_labels"] = json.dumps([[1] * per for _ in range(n)])
    elif kind == "mask":
        # An earlier answer's low-res logits fed back, with one point.
        fields["point_coords"] = json.dumps([draw(point)])
        fields["point_labels"] = "[1]"
        value = draw(st.sampled_from([0.0, -32.0, 32.0, 1.5]))
        fields["mask_input"] = json.dumps(np.full((1, 256, 256), value).tolist())
    elif kind == "odd":
        field = draw(st.sampled_from(["point_coords", "point_labels", "box", "mask_input"]))
        fields[field] = draw(st.sampled_from(ODD_VALUES))
        if field == "point_coords":
            fields["point_labels"] = "[1]"
        elif field == "point_labels":
            fields["point_coords"] = "[[1, 1]]"
    elif kind == "over":
        # Over MAX_POINTS (256 per object), MAX_OBJECTS (64), MAX_TOTAL_POINTS (4096).
        which = draw(st.sampled_from(["points", "boxes", "total"]))
        if which == "points":
            fields["point_coords"] = json.dumps([[1, 1]] * 257)
            fields["point_labels"] = json.dumps([1] * 257)
        elif which == "boxes":
            fields["box"] = json.dumps([[0, 0, 5, 5]] * 65)
        else:  # 20 objects x 250 points: each under its limit, 5000 in all
            fields["box"] = json.dumps([[0, 0, 5, 5]] * 20)
            fields["point_coords"] = json.dumps([[[1, 1]] * 250] * 20)
            fields["point_labels"] = json.dumps([[1] * 250] * 20)
    for flag in ("multimask_output", "return_logits", "normalize_coords"):
        value = draw(st.sampled_from([None, "true", "false", "True", "0", "yes", "off"]))
        if value is not None:
            fields[flag] = value
    return fields


def _true(value) -> bool:
    return str(value).lower() in {"true", "1", "yes", "on"}


def _expected_lead(fields) -> tuple[int, ...]:
    """The answer's leading axes: (C,) for one object, (B, C) for B > 1 objects."""
    c = 3 if _true(fields.get("multimask_output", "true")) else 1
    objects = 1
    for name, ndim in (("box", 2), ("point_coords", 3)):
        if name in fields:
            array = np.array(json.loads(fields[name]))
            if array.ndim == ndim:
                objects = max(objects, array.shape[0])
    return (objects, c) if objects > 1 else (c,)


def _extreme(fields) -> bool:
    for name in ("point_coords", "box"):
        if name in fields and np.abs(np.array(json.loads(fields[name]))).max() > EXTREME:
            return True
    return False


def _decoded_size(data) -> tuple[int, int] | None:
    data = getattr(data, "data", data)  # schemathesis wraps generated uploads in `Binary`
    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            image.load()
            return image.size
    except Exception:
        return None


def check_answer(response, fields, image_bytes) -> None:
    """A 200 has the shapes the request implies, finite numbers, best-first scores."""
    sent = f"{json.dumps(fields)[:600]}"
    answer = response.json()
    masks = np.array(json.loads(answer["masks"]), dtype=np.float32)
    scores = np.array(json.loads(answer["scores"]), dtype=np.float32)
    logits = np.array(json.loads(answer["logits"]), dtype=np.float32)
    lead = _expected_lead(fields)
    size = _decoded_size(image_bytes)
    assert size is not None, f"200 for an upload PIL cannot decode: {sent}"
    w, h = size
    assert masks.shape == (*lead, h, w), f"masks {masks.shape}, want {(*lead, h, w)}: {sent}"
    assert scores.shape == lead, f"scores {scores.shape}, want {lead}: {sent}"
    assert logits.shape == (*lead, 256, 256), f"logits {logits.shape}: {sent}"
    for name, array in (("masks", masks), ("scores", scores), ("logits", logits)):
        # A non-finite float has no JSON spelling: it reaches the client as `null`.
        assert np.isfinite(array).all(), f"200 with non-finite {name} for {sent}"
    assert np.all(np.diff(scores, axis=-1) <= 0), f"scores not best first {scores}: {sent}"
    if not _true(fields.get("return_logits", "true")):
        assert set(np.unique(masks)) <= {0.0, 1.0}, f"masks not 0/1: {sent}"


@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@pytest.mark.parametrize("kind", VALID_KINDS + INVALID_KINDS)
def test_segment_fuzz_reaching_inference(api_schema, kind):
    # The request is no longer the one generated: only the checks that do not
    # depend on how schemathesis meant it (positive or negative) apply.
    checks = [check for check in CHECKS if check is not negative_data_rejection]

    @settings(FUZZ_SETTINGS, max_examples=12)
    @given(
        # Positive only: a negative case may drop the Authorization header on purpose
        # (schemathesis then sends none), and the body is replaced here anyway.
        case=api_schema[SEGMENT]["POST"].as_strategy(generation_mode=GenerationMode.POSITIVE),
        image=st.sampled_from([None, *IMAGES]),
        fields=prompt_fields(kind),
    )
    def fuzz(case, image, fields):
        without_auth(case)
        if not isinstance(case.body, dict):
            # A negative case whose body is not even a form: send it as generated.
            case.call_and_validate(headers=AUTH, checks=CHECKS)
            return
        body = dict(case.body)
        if image is not None:  # else the upload schemathesis generated
            body["image"] = IMAGES[image]
        # Only the upload (when not swapped) and any extra field stay as generated.
        for name in PROMPT_FIELDS:
            body.pop(name, None)
        body.update(fields)
        case.body = body
        response = case.call_and_validate(headers=AUTH, checks=checks)
        status = response.status_code
        sent = f"{kind} {json.dumps(fields)[:300]}: {response.text[:300]}"
        if image is None and status == 422:
            pass  # the generated upload is missing or not a file
        elif kind in INVALID_KINDS:
            assert status == 400, sent
            named = [name for name in fields if name in response.json()["detail"]["msg"]]
            assert named, f"the message names none of the fields sent: {sent}"
        elif image is not None and not _extreme(fields):
            assert status == 200, sent
        if status == 200:
            check_answer(response, fields, body["image"])

    fuzz()


# -- 3: no token ---------------------------------------------------------------------------


def test_segment_without_token_is_401(api_schema):
    @settings(FUZZ_SETTINGS, max_examples=20)
    @given(
        case=generated(api_schema, "POST", SEGMENT),
        headers=st.sampled_from([{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]),
    )
    def fuzz(case, headers):
        without_auth(case)
        response = case.call(headers=headers)
        assert response.status_code == 401, response.text[:300]
        assert response.json() == {"detail": {"msg": "Invalid bearer token."}}
        assert response.headers["www-authenticate"] == ["Bearer"]

    fuzz()

"""`answer_id` and `mask_input` by reference on `POST /v1/images/{id}/segment`.

A reference `{"answer_id", "index"}` must give exactly the answer that sending
the same candidate's logits packed gives: the same bytes, masks, scores and
logits. The kept logits are bounded by bytes (ANSWER_CACHE_BYTES), least
recently used first, go with their image, and an answer no longer kept is a
404 saying to send the packed logits.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from sam2_server.api import create_app
from sam2_server.api.answers import Answers
from sam2_server.codecs.native import pack_array, unpack_array
from tests.api.test_automatic import small_png
from tests.api.test_errors import assert_error
from tests.api.test_native import DATA, IMAGE, IMAGE_ID
from tests.api.test_parity import BOXES, LABELS, POINTS
from tests.conftest import image_bytes

ANSWER_BYTES = 3 * 256 * 256 * 4  # three candidates' low-res logits, float32
REFINE = {"points": [[400, 250]], "labels": [1], "multimask_output": False}
PACKED_HINT = "send that answer's logits packed"


@pytest.fixture(scope="module")
def uploaded(client) -> str:
    response = client.post("/v1/images", files={"image": (IMAGE, DATA, "image/jpeg")})
    assert response.status_code == 200, response.text
    return response.json()["image_id"]


def segment(client, image_id: str = IMAGE_ID, **body):
    return client.post(f"/v1/images/{image_id}/segment", json=body)


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def without_id(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k != "answer_id"}


def by_reference_and_packed(client, first: dict, index, **body) -> tuple[dict, dict]:
    """The same refinement, once naming `first`'s candidate and once sending it packed."""
    logits = unpack_array(first["logits"])
    if logits.ndim == 4 and isinstance(index, int):
        logits = logits[0]  # one object: k alone
    position = index if isinstance(index, int) else tuple(index)[4 - logits.ndim :]
    chosen = logits[position][None]
    reference = {"answer_id": first["answer_id"], "index": index}
    named = ok(segment(client, **body, mask_input=reference))
    packed = ok(segment(client, **body, mask_input=pack_array(chosen)))
    return named, packed


@pytest.mark.parametrize("index", [0, 1, 2])
@pytest.mark.parametrize("mask_format", ["rle", "png"])
def test_a_reference_is_exactly_the_packed_logits(client, uploaded, index, mask_format):
    first = ok(segment(client, points=POINTS, labels=LABELS))
    assert re.fullmatch(r"[0-9a-f]{32}", first["answer_id"])
    body = {**REFINE, "mask_format": mask_format}
    named, packed = by_reference_and_packed(client, first, index, **body)
    assert without_id(named) == without_id(packed)  # masks, scores and logits, bit for bit
    assert named["answer_id"] != packed["answer_id"]
    # A refinement of a refinement, by reference again; and with no logits back.
    again, again_packed = by_reference_and_packed(client, named, 0, **body)
    assert without_id(again) == without_id(again_packed)
    bare = ok(segment(client, **body, return_logits=False, mask_input=_ref(first, index)))
    assert "logits" not in bare
    assert without_id(bare) == {k: v for k, v in without_id(packed).items() if k != "logits"}
    # The answer without logits still names them: they are kept all the same.
    third, third_packed = by_reference_and_packed(
        client, {**bare, "logits": packed["logits"]}, 0, **body
    )
    assert without_id(third) == without_id(third_packed)


def test_every_answer_has_its_own_unguessable_id(client, uploaded):
    ids = {ok(segment(client, points=POINTS, labels=LABELS))["answer_id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)  # 128 random bits each


def test_several_objects_are_named_b_k(client, uploaded):
    boxes = ok(segment(client, box=BOXES))
    assert unpack_array(boxes["logits"]).shape == (2, 3, 256, 256)
    for index in ([0, 2], [1, 0]):
        named, packed = by_reference_and_packed(client, boxes, index, **REFINE)
        assert without_id(named) == without_id(packed)
    one_box = ok(segment(client, box=[BOXES[0]]))  # B = 1: k alone names [0, k]
    named, packed = by_reference_and_packed(client, one_box, 1, **REFINE)
    assert without_id(named) == without_id(packed)
    single = ok(segment(client, points=POINTS, labels=LABELS))  # one object: [0, k] is k
    named, packed = by_reference_and_packed(client, single, [0, 2], **REFINE)
    assert without_id(named) == without_id(packed)


@pytest.mark.parametrize(
    ("index", "fragment"),
    [
        (3, "index 0 to 2"),
        (-1, "index 0 to 2"),
        ([1, 0], "index 0 to 2"),
        ([0, 0, 0], "k, or [b, k]"),
        ([], "k, or [b, k]"),
    ],
)
def test_a_bad_index_is_400(client, uploaded, index, fragment):
    first = ok(segment(client, points=POINTS, labels=LABELS))
    response = segment(client, **REFINE, mask_input=_ref(first, index))
    assert_error(response, 400, "mask_input.index", fragment)


def test_a_bad_index_of_several_objects_is_400(client, uploaded):
    boxes = ok(segment(client, box=BOXES))
    for index in (1, [2, 0], [0, 3]):
        response = segment(client, **REFINE, mask_input=_ref(boxes, index))
        assert_error(response, 400, "mask_input.index", "2 objects of 3 candidates")


@pytest.mark.parametrize(
    "reference",
    [
        {"answer_id": "0" * 32, "index": 0},  # never given
        {"answer_id": "not an id", "index": 0},
        {"answer_id": "", "index": 0},
    ],
)
def test_an_unknown_answer_is_404_saying_to_send_the_packed_logits(client, uploaded, reference):
    response = segment(client, **REFINE, mask_input=reference)
    assert_error(response, 404, PACKED_HINT, "mask_input")


def test_an_answer_on_another_image_is_404(client, uploaded):
    first = ok(segment(client, points=POINTS, labels=LABELS))
    other = image_bytes("truck.jpg")
    other_id = ok(client.post("/v1/images", files={"image": ("t.jpg", other, "image/jpeg")}))[
        "image_id"
    ]
    response = segment(client, other_id, **REFINE, mask_input=_ref(first, 0))
    assert_error(response, 404, PACKED_HINT)
    # Upper-case hex names the same image: still its answer.
    named = segment(client, IMAGE_ID.upper(), **REFINE, mask_input=_ref(first, 0))
    assert named.status_code == 200, named.text


def test_an_answer_of_another_model_is_404(reduced_settings, reduced_model, reduced_engine):
    """Two served models (the same weights under two ids): an answer names its model."""
    from sam2_server.engine import Engine

    second = str(reduced_model.checkpoint.with_name("copy-" + reduced_model.checkpoint.name))
    shutil.copyfile(reduced_model.checkpoint, second)
    settings = reduced_settings.with_(model_ids=(str(reduced_model.checkpoint), second))
    engine = Engine(settings)
    engine.load()
    with TestClient(create_app(settings, engine, load=False)) as client:
        for model in settings.model_ids:
            files = {"image": (IMAGE, DATA, "image/jpeg")}
            assert client.post("/v1/images", files=files, data={"model_id": model}).is_success
        first = ok(segment(client, points=POINTS, labels=LABELS))  # the default model
        response = segment(client, **REFINE, model_id=second, mask_input=_ref(first, 0))
        assert_error(response, 404, PACKED_HINT)
        mine = segment(client, **REFINE, model_id=settings.model_ids[0], mask_input=_ref(first, 0))
        assert mine.status_code == 200, mine.text


def test_prompt_errors_come_first_and_read_as_for_packed_logits(client, uploaded):
    first = ok(segment(client, points=POINTS, labels=LABELS))
    reference = _ref(first, 0)
    # Several objects with one mask: the same 400 as with packed logits.
    named = segment(client, box=BOXES, mask_input=reference)
    packed = segment(client, box=BOXES, mask_input=pack_array(np.zeros((1, 256, 256), "f4")))
    assert_error(named, 400, "mask_input can only be combined with a single object")
    assert named.json() == packed.json()
    # Fields' 400s before the answer's 404, as before the image's.
    assert_error(segment(client, points=[[1, 2, 3]], labels=[1], mask_input=reference), 400)
    gone = {"answer_id": "f" * 32, "index": 0}
    assert_error(segment(client, points=[[1, 2, 3]], labels=[1], mask_input=gone), 400, "points")


@pytest.mark.parametrize(
    "mask_input",
    [
        {"answer_id": "a" * 32},
        {"answer_id": "a" * 32, "index": "1"},
        {"answer_id": "a" * 32, "index": 1.5},
        {"answer_id": "a" * 32, "index": True},
        {"answer_id": "a" * 32, "index": [0, "1"]},
        {"answer_id": "a" * 129, "index": 0},
        {"answer_id": 7, "index": 0},
        {"answer_id": "a" * 32, "index": 0, "data": "AAAA"},
    ],
)
def test_a_malformed_reference_is_422(client, uploaded, mask_input):
    assert segment(client, **REFINE, mask_input=mask_input).status_code == 422


def test_the_livepeer_routes_native_answer_is_named_too(client, uploaded):
    form = {"point_coords": json.dumps(POINTS), "point_labels": json.dumps(LABELS)}
    files = {"image": (IMAGE, DATA, "image/jpeg")}
    answer = client.post("/segment-anything-2", data={**form, "mask_format": "rle"}, files=files)
    first = ok(answer)
    named, packed = by_reference_and_packed(client, first, 1, **REFINE)
    assert without_id(named) == without_id(packed)
    plain = client.post("/segment-anything-2", data=form, files=files)
    assert set(plain.json()) == {"masks", "scores", "logits"}  # Livepeer's own: unchanged


# -- the bound, eviction, the image, disabled -------------------------------------------


@pytest.fixture
def app_with(reduced_settings, reduced_engine):
    """A client on the shared engine whose app keeps `answer_cache_bytes` of answers."""
    clients = []

    def make(answer_cache_bytes: int, engine=reduced_engine) -> TestClient:
        settings = reduced_settings.with_(answer_cache_bytes=answer_cache_bytes)
        client = TestClient(create_app(settings, engine, load=False))
        client.__enter__()
        clients.append(client)
        assert client.post("/v1/images", files={"image": (IMAGE, DATA, "image/jpeg")}).is_success
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def test_kept_logits_are_bounded_by_bytes_least_recently_used_first(app_with):
    client = app_with(2 * ANSWER_BYTES)  # two three-candidate answers
    answers: Answers = client.app.state.answers
    a, b = (ok(segment(client, points=[[100 * i, 200]], labels=[1])) for i in (1, 2))
    assert answers.stats()["bytes"] == 2 * ANSWER_BYTES
    assert ok(segment(client, **REFINE, mask_input=_ref(a, 0)))  # names a: b is now the oldest
    # That refinement's one-candidate answer (a third of one) pushes b out, not a.
    stats = answers.stats()
    assert (stats["answers"], stats["evicted"]) == (2, 1)
    assert stats["bytes"] == ANSWER_BYTES + ANSWER_BYTES // 3 <= 2 * ANSWER_BYTES
    assert_error(segment(client, **REFINE, mask_input=_ref(b, 0)), 404, PACKED_HINT)
    ok(segment(client, **REFINE, mask_input=_ref(a, 2)))
    c = ok(segment(client, points=POINTS, labels=LABELS))  # 3 more candidates: a goes
    assert_error(segment(client, **REFINE, mask_input=_ref(a, 0)), 404, PACKED_HINT)
    ok(segment(client, **REFINE, mask_input=_ref(c, 0)))
    assert answers.stats()["bytes"] <= 2 * ANSWER_BYTES


def test_an_answer_larger_than_the_bound_is_not_kept(app_with):
    client = app_with(ANSWER_BYTES - 1)
    first = ok(segment(client, points=POINTS, labels=LABELS))
    assert first["answer_id"] is None  # three candidates do not fit
    single = ok(segment(client, **REFINE))
    assert single["answer_id"] is not None  # one does


def test_zero_keeps_none(app_with):
    client = app_with(0)
    first = ok(segment(client, points=POINTS, labels=LABELS))
    assert first["answer_id"] is None
    assert "logits" in first
    assert client.app.state.answers.stats()["answers"] == 0
    response = segment(client, **REFINE, mask_input={"answer_id": "a" * 32, "index": 0})
    assert_error(response, 404, PACKED_HINT)
    assert ok(segment(client, **REFINE, mask_input=pack_array(np.zeros((1, 256, 256), "f4"))))


def test_answers_go_with_their_image(app_with, reduced_settings):
    """When the image's embedding is evicted, its answers are dropped: the segment
    request says to upload the image again, and after the upload the old answer is
    gone (a 404 saying to send the packed logits)."""
    from sam2_server.engine import Engine

    engine = Engine(reduced_settings)
    engine.load()
    client = app_with(64 * ANSWER_BYTES, engine)
    answers: Answers = client.app.state.answers
    first = ok(segment(client, points=POINTS, labels=LABELS))
    on_other = client.post("/v1/images", files={"image": ("t.jpg", image_bytes("truck.jpg"))})
    other = ok(segment(client, on_other.json()["image_id"], points=[[50, 50]], labels=[1]))
    assert answers.stats()["answers"] == 2
    # The cache holds one embedding from now on: the next upload evicts ours.
    embedding = engine.encoder.cached(engine.default_model_id, IMAGE_ID)
    engine.encoder.cache.max_bytes = embedding.nbytes
    small = small_png()  # another image, whose embedding fits the bound
    assert client.post("/v1/images", files={"image": ("g.png", small)}).is_success
    assert engine.encoder.cached(engine.default_model_id, IMAGE_ID) is None

    response = segment(client, **REFINE, mask_input=_ref(first, 0))
    assert_error(response, 404, "upload it again")
    assert answers.stats()["answers"] == 1  # the other image's answer stays (for its own 404)
    assert client.post("/v1/images", files={"image": (IMAGE, DATA, "image/jpeg")}).is_success
    assert_error(segment(client, **REFINE, mask_input=_ref(first, 0)), 404, PACKED_HINT)
    assert other["answer_id"]


def test_typed_in_openapi(client):
    components = client.get("/openapi.json").json()["components"]["schemas"]
    answer_id = components["SegmentResponse"]["properties"]["answer_id"]
    assert {"type": "string"} in answer_id["anyOf"]
    assert "answer_id" in components["SegmentResponse"]["required"]
    mask_input = components["SegmentRequest"]["properties"]["mask_input"]["anyOf"]
    assert {"$ref": "#/components/schemas/AnswerReference"} in mask_input
    assert set(components["AnswerReference"]["properties"]) == {"answer_id", "index"}


def _ref(answer: dict, index) -> dict:
    return {"answer_id": answer["answer_id"], "index": index}

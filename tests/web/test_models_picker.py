"""The page's model pickers against a server of two models, one of each family.

A `sam2-server serve` process lists the reduced random-weight SAM 2 checkpoint
(the default) and the random-weight EdgeTAM repository in MODEL_ID; the page
asks `GET /v1/models` and shows a picker in each mode. Picking EdgeTAM
uploads the open image again for it and asks its prompts anew: every request
names the picked model, no answer of the other model is ever referred to,
and the mask drawn is the API's own answer for that model. Video sessions
open on the picked model, and a session with work is never switched under
the user. An older server (no such route) gets the page as before.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import VIDEO_FRAMES
from tests.e2e.process import Server, start_server
from tests.web.conftest import CHROMIUM, is_segment, is_upload, is_video_upload
from tests.web.test_page import (
    AUTH,
    PHOTO,
    TOKEN,
    _b64,
    api_segment,
    assert_same_as_packed,
    canvas_rgba,
    wait_for_overlay,
    wait_for_text,
    wait_until_enabled,
)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def two_models(reduced_model, hf_edgetam) -> Iterator[tuple[Server, str, str]]:
    """The server, its default (SAM 2) model's id and EdgeTAM's; only the default loads at start."""
    sam2 = str(reduced_model.checkpoint)
    env = {
        "MODEL_ID": f"{sam2},{hf_edgetam}",
        "MODEL_CONFIG": str(reduced_model.config),
        "AUTH_TOKEN": TOKEN,
    }
    server = start_server(env)
    try:
        yield server, sam2, hf_edgetam
    finally:
        server.stop()


# Chromium does not hand Playwright a multipart body that holds a file: the page's
# forms are recorded as they are sent instead (their text fields, in order).
RECORD_FORMS = """
(() => {
  const send = XMLHttpRequest.prototype.send;
  const fetched = window.fetch;
  const record = (body) => {
    if (!(body instanceof FormData)) return;
    const fields = {};
    for (const [name, value] of body.entries()) if (typeof value === "string") fields[name] = value;
    (window.__forms = window.__forms || []).push(fields);
  };
  XMLHttpRequest.prototype.send = function (body) { record(body); return send.call(this, body); };
  window.fetch = function (input, init) {
    record(init && init.body);
    return fetched.call(this, input, init);
  };
})();
"""


@pytest.fixture
def page(page):
    """The package's page, recording the forms it sends (`forms(page)`)."""
    page.add_init_script(RECORD_FORMS)
    return page


def forms(page) -> list[dict]:
    """The text fields of every form the page has sent, in order."""
    return page.evaluate("() => window.__forms || []")


def options(page, select: str) -> list[dict]:
    return page.evaluate(
        "(s) => [...document.querySelectorAll(`${s} option`)]"
        ".map((o) => ({value: o.value, text: o.textContent, disabled: o.disabled}))",
        select,
    )


def drawn_mask(page) -> np.ndarray:
    """Where the image's overlay is painted (mask.js paints exactly the mask's pixels)."""
    return canvas_rgba(page, "mask")[..., 3] > 0


def served_mask(answer: dict, index: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(_b64(answer["masks"][index])))) == 255


def test_picking_a_model_sends_it_and_draws_its_answer(page, two_models):
    server, sam2, edgetam = two_models
    listed = httpx.get(server.url + "/v1/models", headers=AUTH).json()["models"]
    assert [m["model_id"] for m in listed] == [sam2, edgetam]

    page.goto(f"{server.url}/#token={TOKEN}")
    page.wait_for_selector("#model", state="visible")
    assert options(page, "#model") == [
        {"value": sam2, "text": "sam2.1_hiera_reduced · SAM 2", "disabled": False},
        {"value": edgetam, "text": "EdgeTAM-hf · EdgeTAM", "disabled": False},
    ]
    assert page.input_value("#model") == sam2  # the default
    assert page.is_enabled("#model")

    # The default model: the upload and the click name it.
    with page.expect_response(is_upload) as upload:
        page.set_input_files("#file", PHOTO)
    assert forms(page)[-1].get("model_id") == sam2
    image_id = upload.value.json()["image_id"]
    marks = page.locator("#marks")
    box = marks.bounding_box()
    click = {"x": box["width"] * 0.42, "y": box["height"] * 0.55}
    with page.expect_response(is_segment) as first:
        marks.click(position=click)
    assert json.loads(first.value.request.post_data)["model_id"] == sam2
    wait_for_text(page, "status", "score")
    page.keyboard.press("2")  # a chosen candidate: the next click would refine it
    wait_for_text(page, "status", "mask 2/3")

    # EdgeTAM: the same file uploaded again for it, the click asked again of it, afresh.
    uploaded = []
    page.on("request", lambda r: r.url.endswith("/v1/images") and uploaded.append(r))
    with (
        page.expect_response(lambda r: is_upload(r) and r.status == 200) as again,
        page.expect_response(is_segment) as asked,
    ):
        page.select_option("#model", edgetam)
    assert forms(page)[-1].get("model_id") == edgetam
    assert again.value.json()["model_id"] == edgetam
    assert again.value.json()["image_id"] == image_id  # the same bytes
    sent = json.loads(asked.value.request.post_data)
    assert sent["model_id"] == edgetam
    assert sent["points"] == json.loads(first.value.request.post_data)["points"]
    assert "mask_input" not in sent  # never the other model's answer
    answer = asked.value.json()
    assert answer["model_id"] == edgetam
    assert len(uploaded) == 1
    wait_for_text(page, "image-info", "EdgeTAM-hf")
    wait_for_text(page, "status", f"score {answer['scores'][0]:.3f}")

    # The mask drawn is the API's answer for EdgeTAM to the same request.
    direct = api_segment(server, image_id, sent)
    assert direct["masks"] == answer["masks"]
    assert direct["scores"] == answer["scores"]
    wait_for_overlay(page, "(now) => now.painted > 0")
    assert np.array_equal(drawn_mask(page), served_mask(answer, 0))

    # A refining click names EdgeTAM's own answer, on EdgeTAM.
    with page.expect_response(is_segment) as refined:
        marks.click(position={"x": box["width"] * 0.8, "y": box["height"] * 0.2}, button="right")
    body = json.loads(refined.value.request.post_data)
    assert body["model_id"] == edgetam
    assert body["mask_input"] == {"answer_id": answer["answer_id"], "index": 0}
    assert_same_as_packed(server, asked.value, refined.value, 0)
    wait_for_text(page, "status", f"score {refined.value.json()['scores'][0]:.3f}")
    assert np.array_equal(drawn_mask(page), served_mask(refined.value.json(), 0))

    # Back to SAM 2: its embedding is still cached; nothing of EdgeTAM's is sent.
    with (
        page.expect_response(lambda r: is_upload(r) and r.status == 200) as back,
        page.expect_response(is_segment) as asked_back,
    ):
        page.select_option("#model", sam2)
    assert forms(page)[-1].get("model_id") == sam2
    assert back.value.json()["cached"] is True
    sent = json.loads(asked_back.value.request.post_data)
    assert sent["model_id"] == sam2
    assert "mask_input" not in sent
    assert sent["labels"] == [1, 0]  # the prompts on screen, asked again
    wait_for_text(page, "image-info", "sam2.1_hiera_reduced")
    page.click("#undo")  # the history starts at the pick: the image alone
    assert page.is_disabled("#undo")

    assert page.text_content("#error") == ""
    assert page.errors == []
    assert all(url.startswith((server.url + "/", "data:", "blob:")) for url in page.urls)


def test_video_sessions_open_on_the_picked_model(page, two_models, tmp_path):
    """The picked model opens the session; picking another re-opens a clip with
    nothing prompted at once, but a session with work stays on its model until
    "Re-open with …" is pressed."""
    server, sam2, edgetam = two_models
    frames = []
    for index, path in enumerate(VIDEO_FRAMES[:2]):  # small: the session's cost is not the point
        frames.append(tmp_path / f"{index}.png")
        Image.open(path).resize((160, 90)).save(frames[-1])
    page.goto(f"{server.url}/#token={TOKEN}")
    page.keyboard.press("v")
    page.wait_for_selector("#v-model", state="visible")
    assert [o["value"] for o in options(page, "#v-model")] == [sam2, edgetam]
    assert page.input_value("#v-model") == sam2
    page.select_option("#v-model", edgetam)

    with page.expect_response(is_video_upload) as opened:
        page.set_input_files("#video-file", [str(p) for p in frames])
    assert forms(page)[-1].get("model_id") == edgetam
    first = opened.value.json()
    assert first["model_id"] == edgetam
    wait_for_text(page, "video-info", "EdgeTAM-hf")
    wait_until_enabled(page, "#v-new-object")

    # Nothing prompted yet: picking SAM 2 re-opens the clip for it, and closes the old session.
    with (
        page.expect_response(is_video_upload) as reopened,
        page.expect_response(
            lambda r: r.request.method == "DELETE" and first["video_id"] in r.url
        ) as closed,
    ):
        page.select_option("#v-model", sam2)
    assert forms(page)[-1].get("model_id") == sam2
    assert closed.value.status == 204
    second = reopened.value.json()
    wait_for_text(page, "video-info", "sam2.1_hiera_reduced")
    wait_until_enabled(page, "#v-new-object")

    # A prompt is work: picking EdgeTAM now keeps the session and says so.
    with page.expect_response(lambda r: r.url.endswith("/prompts")) as prompted:
        page.locator("#v-marks").click(position={"x": 100, "y": 60})
    assert prompted.value.status == 200
    wait_until_enabled(page, "#v-track")
    videos = sum(u.endswith("/v1/videos") for u in page.urls)
    page.select_option("#v-model", edgetam)
    page.wait_for_selector("#v-reopen", state="visible")
    assert page.text_content("#v-reopen") == "Re-open with EdgeTAM-hf"
    wait_for_text(page, "v-status", "stays on sam2.1_hiera_reduced")
    assert "sam2.1_hiera_reduced" in page.text_content("#video-info")
    assert sum(u.endswith("/v1/videos") for u in page.urls) == videos
    # Its prompts still go to its own session (and so to its model).
    with page.expect_response(lambda r: r.url.endswith("/prompts")) as more:
        page.locator("#v-marks").click(position={"x": 40, "y": 30}, button="right")
    assert second["video_id"] in more.value.url

    with page.expect_response(is_video_upload) as third:
        page.click("#v-reopen")
    assert forms(page)[-1].get("model_id") == edgetam
    assert third.value.json()["model_id"] == edgetam
    wait_for_text(page, "video-info", "EdgeTAM-hf")
    page.wait_for_selector("#v-reopen", state="hidden")
    assert page.text_content("#v-error") == ""
    assert page.errors == []


def test_without_the_models_route_the_page_works_as_before(page, two_models):
    """An older server has no GET /v1/models: no picker, and the model the first
    upload got is the one every later request names."""
    server, sam2, _ = two_models
    missing = {"detail": "Not Found"}
    page.route("**/v1/models", lambda route: route.fulfill(status=404, json=missing))
    page.goto(f"{server.url}/#token={TOKEN}")
    with page.expect_response(is_upload) as upload:
        page.set_input_files("#file", PHOTO)
    assert "model_id" not in forms(page)[-1]
    assert upload.value.json()["model_id"] == sam2
    wait_for_text(page, "image-info", "800")
    with page.expect_response(is_segment) as segment:
        page.locator("#marks").click(position={"x": 200, "y": 200})
    assert json.loads(segment.value.request.post_data)["model_id"] == sam2
    assert page.is_hidden("#model")
    page.keyboard.press("v")
    assert page.is_hidden("#v-model")
    assert [e for e in page.errors if "status of 404" not in e] == []


def test_what_a_model_cannot_do_is_said_and_the_token_is_awaited(page, two_models):
    """A model without automatic masks disables Segment everything, saying why; one
    without video is greyed out in video mode's picker; the list, refused before the
    token is given (401), comes once it is."""
    server, sam2, edgetam = two_models

    def without_edgetams_extras(route):
        answer = route.fetch()
        body = answer.json()
        if answer.status == 200:
            for model in body["models"]:
                if model["model_id"] == edgetam:
                    model.update(automatic_masks=False, video=False)
        route.fulfill(response=answer, json=body)

    page.route("**/v1/models", without_edgetams_extras)
    page.goto(f"{server.url}/")
    page.wait_for_timeout(300)
    assert page.is_hidden("#model")  # 401: no token yet
    with page.expect_response(lambda r: r.url.endswith("/v1/models") and r.status == 200):
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
    page.wait_for_selector("#model", state="visible")

    with page.expect_response(is_upload):
        page.set_input_files("#file", PHOTO)
    wait_until_enabled(page, "#everything")
    assert page.text_content("#everything-why") == ""
    with page.expect_response(lambda r: is_upload(r) and r.status == 200):
        page.select_option("#model", edgetam)
    wait_for_text(page, "image-info", "EdgeTAM-hf")
    assert page.is_disabled("#everything")
    assert page.text_content("#everything-why") == (
        "not with EdgeTAM-hf: this model does not generate automatic masks"
    )
    page.keyboard.press("e")
    page.wait_for_timeout(200)
    assert not any(u.endswith("/automatic-masks") for u in page.urls)

    page.keyboard.press("v")
    assert options(page, "#v-model") == [
        {"value": sam2, "text": "sam2.1_hiera_reduced · SAM 2", "disabled": False},
        {"value": edgetam, "text": "EdgeTAM-hf · EdgeTAM (no video)", "disabled": True},
    ]
    assert page.input_value("#v-model") == sam2
    assert [e for e in page.errors if "status of 401" not in e] == []

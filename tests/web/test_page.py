"""The web page in a real browser against a real server process.

Debian's Chromium (`/usr/bin/chromium`), driven by Playwright's Python
package, opens `/` on a `sam2-server serve` process running the reduced
random-weight model with auth on, and uses the page as a person would: open a
photo, click, cycle candidates, add a background point, undo, draw a box,
download the mask, segment everything. The requests the page sends are
checked against the native API contract, the overlay against the canvas's
pixels, and the page may not reach anything but the server.
`UPDATE_SCREENSHOT=1` writes the README's screenshot, docs/screenshot.png,
from this run.
Playwright never downloads a browser here: it launches the system one.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tests.conftest import DATA
from tests.e2e.process import Server, requests_counted, serving_local
from tests.web.conftest import CHROMIUM, VIEWPORT, is_automatic, is_segment, is_upload

TOKEN = "web-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PHOTO = DATA / "groceries.jpg"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshot.png"
SCREENSHOT_MAX_BYTES = 300_000

# Random weights never pass the generator's default thresholds, and their
# noise masks all have the whole image as their box (one survives the box
# NMS): keep every candidate of a 2x2 grid, the knobs through the page's address.
EVERYTHING_QUERY = "points_per_side=2&pred_iou_thresh=0&stability_score_thresh=0&box_nms_thresh=1"
EVERYTHING_TIMEOUT_MS = 120_000

# Count and fingerprint the overlay's painted pixels.
READ_OVERLAY = """() => {
  const canvas = document.getElementById("mask");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0, hash = 0;
  for (let i = 3; i < data.length; i += 4) {
    if (data[i]) { painted++; hash = (hash * 31 + i) >>> 0; }
  }
  return {painted, hash, width: canvas.width, height: canvas.height};
}"""

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def server(reduced_model) -> Iterator[Server]:
    # No time budget for automatic masks: the speed the server learns from the earlier
    # small grids, on a loaded machine, could refuse the slow grid the abort tests
    # need before it starts (a 400 instead of a request to abort).
    with serving_local(reduced_model, AUTH_TOKEN=TOKEN, AUTOMATIC_TIME_BUDGET="0") as server:
        yield server


def overlay(page) -> dict:
    return page.evaluate(READ_OVERLAY)


# Functions, never bare expressions: polling a bare expression needs eval,
# which the page's Content-Security-Policy rightly refuses.
def wait_for_overlay(page, condition: str, arg: object = None) -> dict:
    """Wait until `condition`, a JS function of (overlay, arg), holds."""
    page.wait_for_function(f"(arg) => ({condition})(({READ_OVERLAY})(), arg)", arg=arg)
    return overlay(page)


def wait_for_text(page, element_id: str, text: str, timeout: float | None = None) -> None:
    page.wait_for_function(
        "([id, text]) => document.getElementById(id).textContent.includes(text)",
        arg=[element_id, text],
        timeout=timeout,
    )


def test_page_files_are_served(server):
    index = httpx.get(server.url + "/")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    assert index.headers["cache-control"] == "no-cache"
    assert "default-src 'self'" in index.headers["content-security-policy"]
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css")]:
        asset = httpx.get(f"{server.url}/web/{name}")
        assert asset.status_code == 200
        assert asset.headers["content-type"].startswith(kind)
        again = httpx.get(
            f"{server.url}/web/{name}", headers={"If-None-Match": asset.headers["etag"]}
        )
        assert again.status_code == 304
    head = httpx.head(server.url + "/web/app.js")
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) > 1000
    missing = httpx.get(server.url + "/web/../../pyproject.toml")
    assert missing.status_code == 404
    assert httpx.get(server.url + "/web/nope.js").json()["detail"]["msg"]
    assert "/" not in httpx.get(server.url + "/openapi.json").json()["paths"]


def test_click_refine_undo_download(page, server, tmp_path):
    page.goto(f"{server.url}/#token={TOKEN}")
    # The token is kept, and taken out of the address bar.
    assert page.evaluate("location.hash") == ""
    assert page.input_value("#token") == TOKEN
    assert page.evaluate("localStorage.getItem('sam2-server.token')") == TOKEN

    with page.expect_response(is_upload) as upload:
        page.set_input_files("#file", PHOTO)
    assert upload.value.status == 200
    answer = upload.value.json()
    assert (answer["width"], answer["height"]) == Image.open(PHOTO).size
    size = "800\N{MULTIPLICATION SIGN}534"
    wait_for_text(page, "image-info", size)
    assert size in page.text_content("#image-info")
    blank = overlay(page)
    assert blank == {"painted": 0, "hash": 0, "width": 800, "height": 534}

    # A left click: one foreground point in image pixels, three candidates.
    marks = page.locator("#marks")
    box = marks.bounding_box()
    click = {"x": box["width"] * 0.42, "y": box["height"] * 0.55}
    with page.expect_response(is_segment) as first:
        marks.click(position=click)
    assert first.value.status == 200
    sent = json.loads(first.value.request.post_data)
    assert sent["mask_format"] == "png"
    assert sent["multimask_output"] is True
    assert sent["return_logits"] is False  # refining names the answer: no logits needed
    assert "logits" not in first.value.json()
    assert sent["labels"] == [1]
    assert "mask_input" not in sent
    (x, y), scale = sent["points"][0], 800 / box["width"]
    assert x == pytest.approx(click["x"] * scale, abs=1.5)
    assert y == pytest.approx(click["y"] * scale, abs=1.5)
    assert first.value.request.headers["authorization"] == f"Bearer {TOKEN}"
    best = wait_for_overlay(page, "(now) => now.painted > 0")
    assert best["painted"] > 0

    # The candidates, best first, with their scores; choosing one redraws.
    candidates = page.locator("#candidates button")
    assert candidates.count() == 3
    assert candidates.nth(0).get_attribute("aria-pressed") == "true"
    scores = first.value.json()["scores"]
    assert f"{scores[1]:.3f}" in candidates.nth(1).text_content()
    candidates.nth(1).click()
    assert candidates.nth(1).get_attribute("aria-pressed") == "true"
    wait_for_text(page, "status", "mask 2/3")  # candidates may coincide: the status says which
    second = overlay(page)
    second_status = page.text_content("#status")
    assert second_status.startswith("segment 200 · ")

    # A right click: a background point refining the chosen candidate.
    with page.expect_response(is_segment) as refined:
        marks.click(position={"x": box["width"] * 0.8, "y": box["height"] * 0.2}, button="right")
    assert refined.value.status == 200
    sent = json.loads(refined.value.request.post_data)
    assert sent["labels"] == [1, 0]
    assert sent["multimask_output"] is False
    # The chosen candidate by reference: the server keeps the first answer's logits.
    assert sent["mask_input"] == {"answer_id": first.value.json()["answer_id"], "index": 1}
    assert_same_as_packed(server, first.value, refined.value, 1)
    assert page.locator("#candidates button").count() == 0  # one mask now
    wait_for_text(page, "status", "segment 200")
    refined_score = f"score {refined.value.json()['scores'][0]:.3f}"
    wait_for_text(page, "status", refined_score)
    assert "mask 2/3" not in page.text_content("#status")

    # Undo: the earlier answer again, without a request, and the status line
    # is that answer's again: its request, its candidate and score.
    segments = sum(url.endswith("/segment") for url in page.urls)
    page.click("#undo")
    assert page.locator("#candidates button").count() == 3
    assert candidates.nth(1).get_attribute("aria-pressed") == "true"
    wait_for_overlay(page, "(now, want) => now.hash === want", second["hash"])
    wait_for_status(page, second_status)
    assert sum(url.endswith("/segment") for url in page.urls) == segments

    # A drag draws a box, sent in image pixels with the point.
    left, top = box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.3
    with page.expect_response(is_segment) as boxed:
        page.mouse.move(left, top)
        page.mouse.down()
        page.mouse.move(left + 120, top + 90, steps=5)
        page.mouse.up()
    assert boxed.value.status == 200
    sent = json.loads(boxed.value.request.post_data)
    x0, y0, x1, y1 = sent["box"]
    assert x0 == pytest.approx(box["width"] * 0.25 * scale, abs=1.5)
    assert x1 - x0 == pytest.approx(120 * scale, abs=1.5)
    assert y1 - y0 == pytest.approx(90 * scale, abs=1.5)
    page.click("#undo")

    # A background point again, for the picture, then the mask as a file.
    with page.expect_response(is_segment):
        marks.click(position={"x": box["width"] * 0.8, "y": box["height"] * 0.2}, button="right")
    wait_for_text(page, "status", "segment 200")
    with page.expect_download() as download:
        page.click("#download")
    mask = np.asarray(Image.open(download.value.path()))
    assert mask.shape == (534, 800)
    assert set(np.unique(mask)) <= {0, 255}

    assert page.text_content("#error") == ""
    assert page.errors == []
    assert all(url.startswith((server.url + "/", "data:", "blob:")) for url in page.urls)
    page.evaluate("document.activeElement.blur()")
    page.mouse.move(0, VIEWPORT["height"] - 1)  # no hover highlight in the picture
    save_screenshot(page, tmp_path)


def test_wrong_token_shows_the_servers_message(page, server):
    refused = httpx.post(
        server.url + "/v1/images",
        headers={"Authorization": "Bearer wrong"},
        files={"image": ("groceries.jpg", PHOTO.read_bytes())},
    )
    assert refused.status_code == 401
    message = refused.json()["detail"]["msg"]

    page.goto(f"{server.url}/#token=wrong")
    with page.expect_response(is_upload) as upload:
        page.set_input_files("#file", PHOTO)
    assert upload.value.status == 401
    page.wait_for_function("() => document.getElementById('error').textContent !== ''")
    assert message in page.text_content("#error")
    assert "401" in page.text_content("#error")

    # The right token in the field retries the upload.
    with page.expect_response(is_upload) as retried:
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
    assert retried.value.status == 200


def test_dropped_image_and_evicted_embedding(page, server):
    """A dropped file is uploaded; a segment answered 404 (the server evicted
    the embedding) uploads the image again once and retries."""
    page.goto(f"{server.url}/#token={TOKEN}")
    evicted = []

    def evict_once(route):
        if evicted:
            route.continue_()
            return
        evicted.append(route.request.url)
        body = {"detail": {"msg": "Image not cached; upload it again."}}
        route.fulfill(status=404, json=body)

    page.route("**/segment", evict_once)
    files = page.evaluate_handle(
        """async (b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "groceries.jpg", {type: "image/jpeg"}));
            return transfer;
        }""",
        base64.b64encode(PHOTO.read_bytes()).decode(),
    )
    with page.expect_response(is_upload) as upload:
        page.dispatch_event("#stage", "drop", {"dataTransfer": files})
    assert upload.value.status == 200
    wait_for_text(page, "image-info", "800")

    uploads = sum(url.endswith("/v1/images") for url in page.urls)
    with page.expect_response(lambda r: is_segment(r) and r.status == 200):
        page.locator("#marks").click(position={"x": 200, "y": 200})
    assert len(evicted) == 1
    assert sum(url.endswith("/v1/images") for url in page.urls) == uploads + 1
    wait_for_overlay(page, "(now) => now.painted > 0")
    assert page.text_content("#error") == ""


def test_segment_everything(page, server):
    """Segment everything draws every mask the server returns, each in its own
    colour with the smaller ones on top; a click goes back to prompting, and
    undo comes back to the masks without asking again."""
    page.goto(f"{server.url}/?{EVERYTHING_QUERY}#token={TOKEN}")
    assert page.input_value("#detail") == "2"  # the address's grid shows in the select
    assert page.is_disabled("#everything")  # nothing uploaded yet
    with page.expect_response(is_upload) as upload:
        page.set_input_files("#file", PHOTO)
    image = upload.value.json()
    wait_until_enabled(page, "#everything")

    marks = page.locator("#marks")
    box = marks.bounding_box()
    click = {"x": box["width"] * 0.42, "y": box["height"] * 0.55}
    with page.expect_response(is_segment):
        marks.click(position=click)
    clicked = wait_for_overlay(page, "(now) => now.painted > 0")
    wait_for_text(page, "status", "score")
    clicked_status = page.text_content("#status")

    with page.expect_response(is_automatic, timeout=EVERYTHING_TIMEOUT_MS) as automatic:
        page.click("#everything")
        # Set by the click's own handler: the answer takes seconds to come.
        assert page.is_disabled("#everything")
        assert "Segmenting" in page.text_content("#everything")
    assert automatic.value.status == 200
    assert automatic.value.request.headers["accept"] == "application/x-ndjson"
    sent = json.loads(automatic.value.request.post_data)
    assert sent == {
        "model_id": image["model_id"],
        "mask_format": "rle",
        "points_per_side": 2,
        "pred_iou_thresh": 0,
        "stability_score_thresh": 0,
        "box_nms_thresh": 1,
    }
    progress, answer = ndjson_answer(automatic.value)
    assert progress == [{"done": 1, "total": 1}]  # 2x2 points: one batch
    records = answer["masks"]
    wait_for_text(page, "status", " masks")
    wait_until_enabled(page, "#everything", timeout=EVERYTHING_TIMEOUT_MS)
    status = page.text_content("#status")
    assert "automatic-masks 200" in status
    assert re.search(r"\d+ ms", status)
    count = int(re.search(r"(\d+) masks", status).group(1))

    # The same body straight to the API: the count the page shows is the server's.
    direct = httpx.post(
        f"{server.url}/v1/images/{image['image_id']}/automatic-masks",
        json=sent,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=EVERYTHING_TIMEOUT_MS / 1000,
    )
    assert direct.status_code == 200
    assert count == len(direct.json()["masks"]) == len(records)
    assert count >= 3

    # Every pixel of some mask is painted, in the colour of the topmost mask
    # there (largest drawn first), one colour per mask (its fill and its
    # lighter outline), no two masks alike.
    masks = mask_utils.decode([r["segmentation"] for r in records]).astype(bool)
    owner = np.full(masks.shape[:2], -1)
    for index in sorted(range(count), key=lambda i: (-records[i]["area"], i)):
        owner[masks[..., index]] = index
    rgba = canvas_rgba(page, "mask")
    assert np.array_equal(rgba[..., 3] > 0, owner >= 0)
    keys = (
        (rgba[..., 0].astype(np.int64) << 16) | (rgba[..., 1].astype(np.int64) << 8) | rgba[..., 2]
    )
    colours = {}
    for index in np.unique(owner[owner >= 0]):
        colours[index] = set(np.unique(keys[owner == index]).tolist())
        assert 1 <= len(colours[index]) <= 2
    assert len(colours) >= 3
    assert sum(len(c) for c in colours.values()) == len(set().union(*colours.values()))
    everything = overlay(page)
    assert page.locator("#candidates button").count() == 0
    assert page.is_disabled("#download")

    # A click on the image prompts afresh: one point, no earlier mask_input.
    automatic_calls = sum(url.endswith("/automatic-masks") for url in page.urls)
    with page.expect_response(is_segment) as prompt:
        marks.click(position={"x": box["width"] * 0.6, "y": box["height"] * 0.4})
    sent = json.loads(prompt.value.request.post_data)
    assert len(sent["points"]) == 1
    assert sent["labels"] == [1]
    assert "mask_input" not in sent
    wait_for_overlay(page, "(now, was) => now.painted > 0 && now.hash !== was", everything["hash"])
    assert page.locator("#candidates button").count() == 3

    # Undo: the automatic masks again, then the first click's mask, no request;
    # the status line follows: the masks' request and count, then the click's.
    requests = len(page.urls)
    page.click("#undo")
    wait_for_overlay(page, "(now, want) => now.hash === want", everything["hash"])
    wait_for_status(page, status)
    page.click("#undo")
    wait_for_overlay(page, "(now, want) => now.hash === want", clicked["hash"])
    wait_for_status(page, clicked_status)
    assert len(page.urls) == requests

    # E asks again; Clear (Esc) removes the masks and every prompt.
    with page.expect_response(is_automatic, timeout=EVERYTHING_TIMEOUT_MS):
        page.keyboard.press("e")
    wait_for_overlay(page, "(now, want) => now.hash === want", everything["hash"])
    wait_until_enabled(page, "#everything", timeout=EVERYTHING_TIMEOUT_MS)
    assert sum(url.endswith("/automatic-masks") for url in page.urls) == automatic_calls + 1
    page.keyboard.press("Escape")
    assert overlay(page)["painted"] == 0
    assert page.is_disabled("#undo")
    assert page.is_enabled("#everything")
    # The image alone: the status line is its upload's, no masks or scores.
    status = page.text_content("#status")
    assert status.startswith("upload 200 · ")
    assert "mask" not in status
    assert "score" not in status

    assert page.text_content("#error") == ""
    assert page.errors == []
    assert all(url.startswith((server.url + "/", "data:", "blob:")) for url in page.urls)


def test_segment_everything_shows_the_servers_error(page, server):
    page.goto(f"{server.url}/?box_nms_thresh=2#token={TOKEN}")
    with page.expect_response(is_upload) as upload:
        page.set_input_files("#file", PHOTO)
    image_id = upload.value.json()["image_id"]
    wait_until_enabled(page, "#everything")
    with page.expect_response(is_automatic) as automatic:
        page.click("#everything")
    assert automatic.value.status == 400
    sent = json.loads(automatic.value.request.post_data)
    assert sent["points_per_side"] == 32  # the Detail select's default
    assert sent["box_nms_thresh"] == 2
    refused = httpx.post(
        f"{server.url}/v1/images/{image_id}/automatic-masks",
        json=sent,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert refused.status_code == 400
    message = refused.json()["detail"]["msg"]

    page.wait_for_function("() => document.getElementById('error').textContent !== ''")
    assert page.text_content("#error") == f"{message} (400)"
    wait_until_enabled(page, "#everything")
    assert page.is_disabled("#undo")  # the failed step is gone
    assert overlay(page)["painted"] == 0
    # Chromium logs the 400 itself; nothing else may go wrong.
    assert [e for e in page.errors if "status of 400" not in e] == []


# A grid slow enough on the reduced model to be interrupted (16 batches of 16
# points, about 30 s on 2 cores), in batches short enough that the server stops
# soon after the client leaves (it checks between batches). The default
# thresholds, which random weights never pass, keep its answer empty anyway.
SLOW_EVERYTHING_QUERY = "points_per_side=16&points_per_batch=16"
AUTOMATIC_ROUTE = "/v1/images/{id}/automatic-masks"


@pytest.mark.parametrize("how", ["Escape", "clear", "undo"])
def test_dropping_segment_everything_aborts_it(page, server, how):
    """Esc, Clear or Undo while Segment everything runs aborts its request: the
    browser closes the connection, the server stops (its log's 499: no answer
    sent), no error shows, nothing is drawn, and the status line is what is on
    screen (the image's upload, or the click's answer after an undo)."""
    page.goto(f"{server.url}/?{SLOW_EVERYTHING_QUERY}#token={TOKEN}")
    with page.expect_response(is_upload):
        page.set_input_files("#file", PHOTO)
    wait_until_enabled(page, "#everything")
    marks = page.locator("#marks")
    with page.expect_response(is_segment):
        marks.click(position={"x": 300, "y": 250})
    clicked = wait_for_overlay(page, "(now) => now.painted > 0")
    wait_for_text(page, "status", "score")
    clicked_status = page.text_content("#status")

    left_before = requests_counted(server.url, AUTOMATIC_ROUTE, 499, TOKEN)
    answered_before = requests_counted(server.url, AUTOMATIC_ROUTE, 200, TOKEN)
    failed = []
    page.on("requestfailed", lambda r: failed.append((r.url, r.failure)))
    with page.expect_request(lambda r: r.url.endswith("/automatic-masks")) as sent:
        page.click("#everything")
    assert json.loads(sent.value.post_data)["points_per_side"] == 16
    assert page.is_disabled("#everything")
    page.wait_for_timeout(300)  # the server has the request, and is computing
    if how == "Escape":
        page.keyboard.press("Escape")
    else:
        page.click(f"#{how}")

    page.wait_for_function("() => !document.getElementById('everything').disabled")
    assert page.text_content("#everything") == "Segment everything"
    page.wait_for_function("() => !document.getElementById('stage').classList.contains('busy')")
    wait_until(page, lambda: failed, "the aborted request's requestfailed event")
    assert failed == [(sent.value.url, "net::ERR_ABORTED")]
    # The server saw the client leave and stopped: no answer was sent.
    assert_stopped(page, server, left_before, answered_before)

    status = page.text_content("#status")
    if how == "undo":
        assert overlay(page)["hash"] == clicked["hash"]
        assert status == clicked_status
        assert page.is_enabled("#undo")
    else:
        assert overlay(page)["painted"] == 0
        assert status.startswith("upload 200 · ")
        assert "score" not in status
        assert page.is_disabled("#undo")
    assert "automatic-masks" not in status
    assert page.text_content("#error") == ""
    assert page.errors == []


NOT_KEPT = {"detail": {"msg": "answer is not kept on this server: send its logits packed."}}


def test_refining_sends_the_reference_and_falls_back_to_packed_logits(page, server):
    """A refining click sends a few hundred bytes: the earlier answer named by its
    answer_id and the candidate's index, no logits either way; its mask is the API's
    answer to the same prompt with that candidate's logits packed. When the server no
    longer keeps the answer (a 404), the page asks that step again with return_logits
    and sends the candidate packed, once; no error shows."""
    page.goto(f"{server.url}/#token={TOKEN}")
    with page.expect_response(is_upload):
        page.set_input_files("#file", PHOTO)
    wait_for_text(page, "image-info", "800")
    marks = page.locator("#marks")
    box = marks.bounding_box()
    with page.expect_response(is_segment) as first:
        marks.click(position={"x": box["width"] * 0.42, "y": box["height"] * 0.55})
    wait_for_text(page, "status", "score")
    page.keyboard.press("3")  # the third candidate
    with page.expect_response(is_segment) as refined:
        marks.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.5})
    sent = refined.value.request.post_data
    assert json.loads(sent)["mask_input"] == {
        "answer_id": first.value.json()["answer_id"],
        "index": 2,
    }
    assert json.loads(sent)["return_logits"] is False
    assert len(sent) < 500  # was 350 kB of base64 logits
    assert len(refined.value.body()) < 100_000  # one PNG mask (noise: random weights), no logits
    assert_same_as_packed(server, first.value, refined.value, 2)
    wait_for_text(page, "status", f"score {refined.value.json()['scores'][0]:.3f}")
    with page.expect_download() as download:
        page.click("#download")
    drawn = np.asarray(Image.open(download.value.path()))
    served = np.asarray(Image.open(io.BytesIO(_b64(refined.value.json()["masks"][0]))))
    assert np.array_equal(drawn, served)

    # The server forgot that answer: one 404 to the reference, then the packed logits.
    bodies, refused = [], []

    def forget_once(route):
        body = json.loads(route.request.post_data)
        bodies.append(body)
        if "answer_id" in (body.get("mask_input") or {}) and not refused:
            refused.append(body)
            route.fulfill(status=404, json=NOT_KEPT)
        else:
            route.continue_()

    page.route("**/segment", forget_once)
    with page.expect_response(
        lambda r: is_segment(r) and "data" in (r.request.post_data or "")
    ) as last:
        marks.click(position={"x": box["width"] * 0.3, "y": box["height"] * 0.6}, button="right")
    wait_for_text(page, "status", "segment 200")
    assert len(bodies) == 3, bodies
    ref, again, packed = bodies
    assert ref["mask_input"] == {"answer_id": refined.value.json()["answer_id"], "index": 0}
    # The refined step asked again as it was sent (its own reference), with its logits.
    assert again == {**json.loads(refined.value.request.post_data), "return_logits": True}
    assert packed["mask_input"]["shape"] == [1, 256, 256]
    assert packed["return_logits"] is False
    assert {k: v for k, v in packed.items() if k != "mask_input"} == {
        k: v for k, v in ref.items() if k != "mask_input"
    }
    assert_same_as_packed(server, refined.value, last.value, 0)
    wait_for_overlay(page, "(now) => now.painted > 0")
    assert page.text_content("#error") == ""
    assert [e for e in page.errors if "status of 404" not in e] == []


def test_segment_everything_shows_progress_and_stops(page, server):
    """The bar counts the server's batches of points as its NDJSON lines arrive, with
    the time left; Stop aborts the request (the server stops: its log's 499, no 200)
    and leaves the page as it was before, with no error."""
    page.goto(f"{server.url}/?{SLOW_EVERYTHING_QUERY}#token={TOKEN}")
    with page.expect_response(is_upload):
        page.set_input_files("#file", PHOTO)
    wait_until_enabled(page, "#everything")
    assert page.is_hidden("#everything-progress")
    assert page.is_hidden("#everything-stop")
    with page.expect_response(is_segment):
        page.locator("#marks").click(position={"x": 300, "y": 250})
    clicked = wait_for_overlay(page, "(now) => now.painted > 0")
    wait_for_text(page, "status", "score")
    clicked_status = page.text_content("#status")

    left_before = requests_counted(server.url, AUTOMATIC_ROUTE, 499, TOKEN)
    answered_before = requests_counted(server.url, AUTOMATIC_ROUTE, 200, TOKEN)
    with page.expect_response(is_automatic, timeout=EVERYTHING_TIMEOUT_MS) as streaming:
        page.click("#everything")
        assert page.is_visible("#everything-stop")
        assert page.is_visible("#everything-progress")
    assert streaming.value.status == 200  # the first progress line is on its way
    page.wait_for_function(
        "() => /^[1-9]\\d* \\/ 16 batches · about \\d+ (s|min) left$/.test("
        "document.getElementById('everything-label').textContent)",
        timeout=EVERYTHING_TIMEOUT_MS,
    )
    value = page.evaluate("() => document.getElementById('everything-progress').value")
    assert 1 <= value < 16
    assert page.evaluate("() => document.getElementById('everything-progress').max") == 16
    assert "Segmenting" in page.text_content("#everything")
    page.click("#everything-stop")

    page.wait_for_function("() => !document.getElementById('everything').disabled")
    assert page.text_content("#everything") == "Segment everything"
    assert page.is_hidden("#everything-progress")
    assert page.is_hidden("#everything-stop")
    assert page.text_content("#everything-label") == ""
    assert_stopped(page, server, left_before, answered_before)
    assert overlay(page)["hash"] == clicked["hash"]
    assert page.text_content("#status") == clicked_status
    assert page.is_enabled("#undo")
    page.click("#undo")  # the click's step is the last: Stop left no step of its own
    assert overlay(page)["painted"] == 0
    assert page.text_content("#error") == ""
    assert page.errors == []


def test_docs_offline(page, server):
    """/docs renders with nothing but this server: Swagger UI's files are the
    package's own, and its Content-Security-Policy allows only this origin
    (and FastAPI's inline script, by its hash)."""
    elsewhere = []

    def only_the_server(route):
        if route.request.url.startswith(server.url + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_server)
    response = page.goto(server.url + "/docs")
    assert response.status == 200
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self' 'sha256-" in policy
    assert "unsafe" not in policy

    page.wait_for_selector(".opblock")
    operations = sum(
        len(ops) for ops in httpx.get(server.url + "/openapi.json").json()["paths"].values()
    )
    page.wait_for_function(
        "(n) => document.querySelectorAll('.opblock').length === n", arg=operations
    )
    assert "sam2-server" in page.text_content(".info .title")
    assert page.locator(
        "#operations-default-segment_anything_2_segment_anything_2_post"
    ).count() in (0, 1)

    # Try it out: Swagger UI calls this server (connect-src 'self').
    health = page.locator(".opblock-get", has_text="/health").first
    health.locator(".opblock-summary").click()
    health.locator("button.try-out__btn").click()
    with page.expect_response(lambda r: r.url == server.url + "/health"):
        health.locator("button.execute").click()
    health.locator(".response-col_description").first.wait_for()
    assert '"status"' in health.locator(".responses-wrapper").text_content()

    assert elsewhere == []
    assert all(url.startswith((server.url + "/", "data:", "blob:")) for url in page.urls)
    assert page.errors == []


def ndjson_answer(response) -> tuple[list[dict], dict]:
    """An automatic-masks NDJSON answer: its progress lines' values, and the result."""
    lines = [json.loads(line) for line in response.text().splitlines()]
    assert all(list(line) == ["progress"] for line in lines[:-1]), lines[:-1]
    assert list(lines[-1]) == ["result"]
    return [line["progress"] for line in lines[:-1]], lines[-1]["result"]


def api_segment(server, image_id: str, body: dict) -> dict:
    response = httpx.post(
        f"{server.url}/v1/images/{image_id}/segment",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


def assert_same_as_packed(server, earlier, refined, index: int) -> None:
    """The page's refinement by reference is the API's answer to the same body with the
    earlier answer's candidate `index` packed: its logits asked for again (the same
    request with return_logits), then sent as mask_input."""
    image_id = refined.url.split("/")[-2]
    again = api_segment(
        server, image_id, {**json.loads(earlier.request.post_data), "return_logits": True}
    )
    assert again["masks"] == earlier.json()["masks"]  # the same answer, now with its logits
    logits = np.frombuffer(_b64(again["logits"]["data"]), "<f4").reshape(again["logits"]["shape"])
    body = json.loads(refined.request.post_data)
    packed = {
        "dtype": "float32",
        "shape": [1, 256, 256],
        "data": base64.b64encode(logits[index].tobytes()).decode(),
    }
    direct = api_segment(server, image_id, {**body, "mask_input": packed})
    answer = refined.json()
    assert answer["masks"] == direct["masks"]
    assert answer["scores"] == direct["scores"]
    assert "logits" not in answer


def assert_stopped(page, server, left_before: float, answered_before: float) -> None:
    """The server's log has one more 499 for automatic masks (the client left before
    the answer: it stopped), and no more 200; then nothing left on its way may draw."""
    wait_until(
        page,
        lambda: requests_counted(server.url, AUTOMATIC_ROUTE, 499, TOKEN) == left_before + 1,
        "the server's 499 for the request left",
    )
    assert requests_counted(server.url, AUTOMATIC_ROUTE, 200, TOKEN) == answered_before
    page.wait_for_timeout(300)


def wait_until(page, condition, what: str, timeout_s: float = 60) -> None:
    """Poll `condition` while the page's events keep coming (Playwright's sync
    API delivers them only while it is called: hence no time.sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        page.wait_for_timeout(100)


def wait_for_status(page, text: str) -> None:
    page.wait_for_function(
        "(text) => document.getElementById('status').textContent === text", arg=text
    )


def wait_until_enabled(page, selector: str, timeout: float | None = None) -> None:
    page.wait_for_function(
        "(selector) => !document.querySelector(selector).disabled", arg=selector, timeout=timeout
    )


def canvas_rgba(page, canvas_id: str) -> np.ndarray:
    """The canvas's pixels, H x W x 4 (PNG: straight alpha, as drawn)."""
    url = page.evaluate("(id) => document.getElementById(id).toDataURL('image/png')", canvas_id)
    return np.asarray(Image.open(io.BytesIO(_b64(url.split(",", 1)[1]))).convert("RGBA"))


def save_screenshot(page, tmp_path: Path, target: Path = SCREENSHOT) -> None:
    """The full-colour screenshot under tmp_path; with UPDATE_SCREENSHOT=1 also
    `target` in docs/ (the README's docs/screenshot.png by default), a palette
    copy with as many colours as fit in SCREENSHOT_MAX_BYTES. (Opt-in: its
    timings differ on every run, and a test run should not leave the checkout
    modified.)"""
    full = tmp_path / "page.png"
    page.screenshot(path=str(full))
    image = Image.open(full).convert("RGB")
    for colors in (256, 192, 128, 96, 64):
        buffer = io.BytesIO()
        image.quantize(colors=colors, method=Image.Quantize.FASTOCTREE).save(
            buffer, format="PNG", optimize=True
        )
        if len(buffer.getvalue()) < SCREENSHOT_MAX_BYTES:
            break
    assert len(buffer.getvalue()) < SCREENSHOT_MAX_BYTES
    (tmp_path / target.name).write_bytes(buffer.getvalue())
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        target.write_bytes(buffer.getvalue())


def _b64(text: str) -> bytes:
    return base64.b64decode(text)

"""The page's video mode in a real browser against a real server process.

Chromium (the package's browser, tests/web/conftest.py) opens `/` on a
`sam2-server serve` process running the 256-px random-weight video model
(tests/conftest.py's `video_model`: the image tests' reduced model tracks a
frame in seconds on two cores, this one in a fraction of a second), and uses
video mode as a person would: upload six frames, prompt two objects on
different frames, track forwards and backwards, play back, remove an object,
export. The exported masks are checked against the API's own answers: the
same requests, replayed straight to the API on a second session of the same
frames. Then Stop, the errors (413, 409, 404) and leaving the page; and a
rotated video file, whose frames the page must show as the server counts them.
`UPDATE_SCREENSHOT=1` writes docs/screenshot-video.png from this run.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tests.clips import cycled_frames
from tests.conftest import VIDEO_FRAMES
from tests.e2e import process
from tests.e2e.process import Server, serving_local
from tests.web.conftest import CHROMIUM, is_prompt, is_propagate, is_video_upload
from tests.web.test_page import (
    AUTH,
    TOKEN,
    canvas_rgba,
    save_screenshot,
    wait_for_text,
    wait_until,
    wait_until_enabled,
)

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshot-video.png"
FRAMES = VIDEO_FRAMES[:6]
# The server's frame cap. The Stop and busy checks race a real propagation (about
# 50 ms a frame here), so their clip has this many frames: a couple of seconds of
# work, not the few hundred milliseconds eight frames took, which a loaded CI
# machine's click could miss.
MAX_FRAMES = 40
BUSY_ATTEMPTS = 5  # holds tried, each a propagation that ends by itself
TRACK_TIMEOUT_MS = 120_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def video_server(video_model) -> Iterator[Server]:
    with serving_local(video_model, AUTH_TOKEN=TOKEN, VIDEO_MAX_FRAMES=str(MAX_FRAMES)) as server:
        yield server


def text_of(page, element_id: str) -> str:
    return page.text_content(f"#{element_id}") or ""


def wait_for_frame(page, index: int, frames: int) -> None:
    """Frame `index` is the current one, its picture and masks on screen."""
    wait_for_text(page, "v-frame-label", f"Frame {index + 1} / {frames}")
    page.wait_for_selector(f"#v-stage[data-shown='{index}']", state="attached")


def record_texts(page, element_id: str) -> None:
    """Keep every text the element shows from now on (window.__seen[id]), in order."""
    page.evaluate(
        """(id) => {
          window.__seen = window.__seen || {};
          const seen = (window.__seen[id] = []);
          const element = document.getElementById(id);
          new MutationObserver(() => seen.push(element.textContent)).observe(element, {
            childList: true, characterData: true, subtree: true,
          });
        }""",
        element_id,
    )


def texts_seen(page, element_id: str) -> list[str]:
    return page.evaluate("(id) => window.__seen[id]", element_id)


def object_colour(page, object_id: int) -> tuple[int, int, int]:
    """The colour of the object's button dot (what the overlay must use)."""
    css = page.evaluate(
        "(id) => getComputedStyle(document.querySelector(`#v-objects [data-object='${id}'] .dot`))"
        ".backgroundColor",
        object_id,
    )
    r, g, b = (int(v) for v in css[css.index("(") + 1 : css.index(")")].split(","))
    return r, g, b


def check_overlay(page, masks: dict[int, dict], order: list[int]) -> None:
    """The frame's overlay is exactly `masks` (object id → RLE): painted where some
    mask is, each pixel in its topmost object's colour (fill, or lighter outline),
    so the objects' colours never mix."""
    rgba = canvas_rgba(page, "v-mask")
    owner = np.full(rgba.shape[:2], -1)
    for object_id in order:
        if object_id in masks:
            owner[mask_utils.decode(masks[object_id]).astype(bool)] = object_id
    assert np.array_equal(rgba[..., 3] > 0, owner >= 0)
    colours = [object_colour(page, object_id) for object_id in order]
    assert len(set(colours)) == len(colours)
    for object_id in order:
        if not (owner == object_id).any():
            continue
        r, g, b = object_colour(page, object_id)
        fill, edge = (r, g, b), ((r + 255) >> 1, (g + 255) >> 1, (b + 255) >> 1)
        shown = np.unique(rgba[owner == object_id][:, :3], axis=0).astype(int)
        # Within 2 of the fill or the outline: the canvas stores premultiplied alpha.
        near = [np.abs(shown - np.array(c)).max(axis=1) <= 2 for c in (fill, edge)]
        assert (near[0] | near[1]).all(), (object_id, shown, fill, edge)


def session_calls(responses, server: Server, video_id: str) -> list[tuple[str, str, dict | None]]:
    """The page's successful changes to its session, in order: (method, path after the id, body)."""
    prefix = f"{server.url}/v1/videos/{video_id}"
    calls = []
    for response in responses:
        request = response.request
        if not response.url.startswith(prefix) or request.method == "GET" or response.status >= 300:
            continue
        body = json.loads(request.post_data) if request.post_data else None
        calls.append((request.method, response.url[len(prefix) :], body))
    return calls


def replay(server: Server, calls) -> dict[int, dict[int, dict]]:
    """The same calls straight to the API on a new session of the same frames:
    the last mask each frame got per object, as the page keeps them."""
    files = [("frames", (p.name, p.read_bytes(), "image/jpeg")) for p in FRAMES]
    opened = httpx.post(server.url + "/v1/videos", files=files, headers=AUTH, timeout=120)
    assert opened.status_code == 201, opened.text
    video = f"{server.url}/v1/videos/{opened.json()['video_id']}"
    stored: dict[int, dict[int, dict]] = {}

    def keep(answer: dict) -> None:
        stored[answer["frame_index"]] = {o["object_id"]: o["mask"] for o in answer["objects"]}

    try:
        for method, path, body in calls:
            if path == "/prompts":
                answer = httpx.post(video + path, json=body, headers=AUTH, timeout=60)
                assert answer.status_code == 200, answer.text
                keep(answer.json())
            elif path == "/propagate":
                answer = httpx.post(video + path, json=body, headers=AUTH, timeout=120)
                assert answer.status_code == 200, answer.text
                for line in answer.text.splitlines():
                    keep(json.loads(line))
            elif method == "DELETE" and path.startswith("/objects/"):
                assert httpx.delete(video + path, headers=AUTH, timeout=60).status_code == 200
                for masks in stored.values():
                    masks.pop(int(path.rsplit("/", 1)[1]), None)
            else:
                raise AssertionError(f"unexpected call {method} {path}")
    finally:
        httpx.delete(video, headers=AUTH, timeout=30)
    return {frame: masks for frame, masks in stored.items() if masks}


def test_video_mode(page, video_server, tmp_path):
    """Upload six frames, prompt two objects on different frames, track both
    ways, play back, remove an object, export: the exports are the API's masks."""
    url = video_server.url
    page.goto(f"{url}/#token={TOKEN}")
    responses = []
    page.on("response", lambda r: "/v1/videos" in r.url and responses.append(r))

    # V switches to video mode: its tools show, the image's hide.
    page.keyboard.press("v")
    assert page.get_attribute("#tab-video", "aria-selected") == "true"
    assert page.is_visible("#tools-video")
    assert page.is_hidden("#tools-image")
    # The keys of both modes are listed on the page (?), and Esc closes the list.
    page.keyboard.press("?")
    assert page.is_visible("#keys-panel")
    listed = text_of(page, "keys-panel")
    for what in ("image mode / video mode", "segment everything", "track forwards / backwards"):
        assert what in listed
    page.keyboard.press("Escape")
    assert page.is_hidden("#keys-panel")

    # Frames are uploaded once, in the order of their names whatever the order
    # chosen (the COCO export names them, and the replay below sends them sorted).
    with page.expect_response(is_video_upload) as upload:
        page.set_input_files("#video-file", [str(p) for p in reversed(FRAMES)])
    assert upload.value.status == 201
    assert upload.value.request.headers["authorization"] == f"Bearer {TOKEN}"
    session = upload.value.json()
    assert (session["frames"], session["width"], session["height"]) == (6, 960, 540)
    video_id = session["video_id"]
    wait_until_enabled(page, "#v-new-object")
    assert "6 frames · 960\N{MULTIPLICATION SIGN}540" in text_of(page, "video-info")
    assert text_of(page, "v-frame-label") == "Frame 1 / 6"

    # Object 1 on frame 2: a foreground click, then a background (right) click.
    marks = page.locator("#v-marks")
    box = marks.bounding_box()
    scale = 960 / box["width"]
    page.keyboard.press("ArrowRight")
    wait_for_frame(page, 1, 6)
    at = {"x": box["width"] * 0.45, "y": box["height"] * 0.5}
    with page.expect_response(is_prompt) as first:
        marks.click(position=at)
    assert first.value.status == 200
    sent = json.loads(first.value.request.post_data)
    assert sent["frame_index"] == 1
    assert sent["object_id"] == 1
    assert sent["labels"] == [1]
    assert sent["mask_format"] == "rle"
    assert "box" not in sent
    assert sent["points"][0][0] == pytest.approx(at["x"] * scale, abs=1.5)
    assert sent["points"][0][1] == pytest.approx(at["y"] * scale, abs=1.5)
    with page.expect_response(is_prompt) as second:
        marks.click(position={"x": box["width"] * 0.8, "y": box["height"] * 0.2}, button="right")
    sent = json.loads(second.value.request.post_data)
    assert sent["labels"] == [1, 0]
    assert len(sent["points"]) == 2
    answer = second.value.json()
    assert answer["frame_index"] == 1
    assert [o["object_id"] for o in answer["objects"]] == [1]
    wait_for_text(page, "v-status", "1 object on frame 2")
    check_overlay(page, {1: answer["objects"][0]["mask"]}, [1])

    # Object 2 on frame 5: New object, then a box.
    page.keyboard.press("End")
    page.keyboard.press("ArrowLeft")
    wait_for_frame(page, 4, 6)
    page.keyboard.press("n")  # New object
    assert page.locator("#v-objects button").count() == 2
    assert page.get_attribute("#v-objects [data-object='2']", "aria-pressed") == "true"
    box = marks.bounding_box()  # the tools may have wrapped to another line
    scale = 960 / box["width"]
    left, top = box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.3
    with page.expect_response(is_prompt) as third:
        page.mouse.move(left, top)
        page.mouse.down()
        page.mouse.move(left + 200, top + 150, steps=5)
        page.mouse.up()
    sent = json.loads(third.value.request.post_data)
    assert (sent["frame_index"], sent["object_id"]) == (4, 2)
    assert "points" not in sent
    x0, y0, x1, y1 = sent["box"]
    assert x0 == pytest.approx(box["width"] * 0.2 * scale, abs=1.5)
    assert x1 - x0 == pytest.approx(200 * scale, abs=1.5)
    assert y1 - y0 == pytest.approx(150 * scale, abs=1.5)
    answer = third.value.json()
    # Every object's mask on that frame, drawn at once.
    assert [o["object_id"] for o in answer["objects"]] == [1, 2]
    wait_for_text(page, "v-status", "2 objects on frame 5")
    check_overlay(page, {o["object_id"]: o["mask"] for o in answer["objects"]}, [1, 2])

    # Track forwards (from the first prompted frame): the frames fill in as they
    # stream, the progress bar counting them.
    record_texts(page, "v-progress-label")
    with page.expect_response(is_propagate, timeout=TRACK_TIMEOUT_MS) as forwards:
        page.click("#v-track")
    assert json.loads(forwards.value.request.post_data) == {"reverse": False, "mask_format": "rle"}
    wait_for_text(page, "v-status", "Tracked 5 frames forwards", timeout=TRACK_TIMEOUT_MS)
    lines = [json.loads(line) for line in forwards.value.text().splitlines()]
    assert [line["frame_index"] for line in lines] == [1, 2, 3, 4, 5]
    last_frame = {o["object_id"]: o["mask"] for o in lines[-1]["objects"]}
    progress = [t for t in texts_seen(page, "v-progress-label") if t]
    counted = [t for t in progress if t.startswith("Tracking forwards: ")]
    assert counted[0] == "Tracking forwards: 0 / 5 frames"
    for done in range(1, 6):
        assert f"Tracking forwards: {done} / 5 frames" in counted
    assert page.is_hidden("#v-progress")
    # The page followed the stream to its last frame.
    wait_for_frame(page, 5, 6)
    check_overlay(page, last_frame, [1, 2])

    # Shift+T tracks backwards, from the same first prompted frame.
    with page.expect_response(is_propagate, timeout=TRACK_TIMEOUT_MS) as backwards:
        page.keyboard.press("Shift+T")
    assert json.loads(backwards.value.request.post_data)["reverse"] is True
    wait_for_text(page, "v-status", "Tracked 2 frames backwards", timeout=TRACK_TIMEOUT_MS)
    lines = [json.loads(line) for line in backwards.value.text().splitlines()]
    assert [line["frame_index"] for line in lines] == [1, 0]
    wait_for_frame(page, 0, 6)
    check_overlay(page, {o["object_id"]: o["mask"] for o in lines[-1]["objects"]}, [1, 2])

    # Play back from the stored masks: every frame in order, no request to the
    # server (the frames are the browser's own blob: URLs).
    record_texts(page, "v-frame-label")
    requests = sum(u.startswith(url) for u in page.urls)
    page.keyboard.press("Space")
    page.wait_for_function("() => document.getElementById('v-play').textContent === 'Pause'")
    page.wait_for_function(
        "() => document.getElementById('v-play').textContent === 'Play'", timeout=30_000
    )
    assert text_of(page, "v-frame-label") == "Frame 6 / 6"
    shown = [t for t in texts_seen(page, "v-frame-label")]
    assert shown == [f"Frame {i} / 6" for i in range(2, 7)]
    check_overlay(page, last_frame, [1, 2])  # the stored masks, drawn as it played
    assert sum(u.startswith(url) for u in page.urls) == requests
    save_screenshot(page, tmp_path, SCREENSHOT)

    # Image mode and back: video mode's work is all still there.
    page.click("#tab-image")
    assert page.is_visible("#tools-image")
    assert page.is_hidden("#v-stage-wrap")
    page.click("#tab-video")
    assert text_of(page, "v-frame-label") == "Frame 6 / 6"
    assert page.locator("#v-objects button").count() == 2

    # Remove object 1 (selected with its key).
    page.keyboard.press("1")
    assert page.get_attribute("#v-objects [data-object='1']", "aria-pressed") == "true"
    with page.expect_response(lambda r: "/objects/" in r.url) as removed:
        page.click("#v-remove")
    assert removed.value.request.method == "DELETE"
    assert removed.value.url.endswith(f"/v1/videos/{video_id}/objects/1")
    assert removed.value.json()["objects"] == [2]
    page.wait_for_function("() => document.querySelectorAll('#v-objects button').length === 1")

    # Export both ways.
    with page.expect_download() as zipped:
        page.click("#v-export-zip")
    assert zipped.value.suggested_filename == "00000-00005-masks.zip"
    with page.expect_download() as coco:
        page.click("#v-export-json")
    assert coco.value.suggested_filename == "00000-00005-coco.json"

    # The same requests straight to the API on a second session: the page's
    # exports hold exactly the API's masks (last answer per frame and object).
    calls = session_calls(responses, video_server, video_id)
    assert [(method, path) for method, path, _ in calls] == [
        ("POST", "/prompts"),
        ("POST", "/prompts"),
        ("POST", "/prompts"),
        ("POST", "/propagate"),
        ("POST", "/propagate"),
        ("DELETE", "/objects/1"),
    ]
    expected = replay(video_server, calls)
    assert sorted(expected) == [0, 1, 2, 3, 4, 5]
    assert all(list(masks) == [2] for masks in expected.values())
    assert any(mask_utils.area(masks[2]) > 0 for masks in expected.values())

    with zipfile.ZipFile(zipped.value.path()) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert names == [f"object_2/{frame:05d}.png" for frame in range(6)]
        for frame in range(6):
            png = Image.open(io.BytesIO(archive.read(f"object_2/{frame:05d}.png")))
            assert png.mode == "L"
            assert png.size == (960, 540)
            want = mask_utils.decode(expected[frame][2]) * 255
            assert np.array_equal(np.asarray(png), want), frame

    exported = json.loads(Path(coco.value.path()).read_text())
    assert exported["info"]["video_id"] == video_id
    assert exported["info"]["model_id"] == session["model_id"]
    assert (exported["info"]["width"], exported["info"]["height"]) == (960, 540)
    assert exported["categories"] == [{"id": 2, "name": "object 2", "supercategory": "object"}]
    assert [image["frame_index"] for image in exported["images"]] == list(range(6))
    assert [image["id"] for image in exported["images"]] == list(range(1, 7))
    assert [image["file_name"] for image in exported["images"]] == [p.name for p in FRAMES]
    assert len(exported["annotations"]) == 6
    for annotation in exported["annotations"]:
        frame = annotation["frame_index"]
        rle = expected[frame][2]
        assert annotation["object_id"] == annotation["category_id"] == 2
        assert annotation["image_id"] == frame + 1
        assert annotation["segmentation"] == rle  # the server's RLE, as it came
        coco_rle = {"size": rle["size"], "counts": rle["counts"].encode()}
        assert annotation["area"] == int(mask_utils.area(coco_rle))
        assert annotation["bbox"] == [int(v) for v in mask_utils.toBbox(coco_rle)]
        assert annotation["iscrowd"] == 0

    assert text_of(page, "v-error") == ""
    assert page.errors == []
    assert all(url.startswith((video_server.url + "/", "data:", "blob:")) for url in page.urls)


def test_video_stop_errors_and_leaving(page, video_server, tmp_path):
    """Stop stops the server's work; 413, 409 and an expired session are shown in
    plain words with what to do; leaving the page closes the session."""
    url = video_server.url
    page.goto(f"{url}/#token={TOKEN}")
    page.click("#tab-video")

    # Too many frames: the server's 413, with what to do.
    with page.expect_response(is_video_upload) as refused:
        page.set_input_files(
            "#video-file", cycled_frames(VIDEO_FRAMES, tmp_path / "too-many", MAX_FRAMES + 1)
        )
    assert refused.value.status == 413
    message = refused.value.json()["detail"]["msg"]
    wait_for_text(page, "v-error", message)
    assert "413: the clip is too large for this server" in text_of(page, "v-error")
    assert page.is_disabled("#v-track")

    # A clip at the cap opens.
    with page.expect_response(is_video_upload) as upload:
        page.set_input_files(
            "#video-file", cycled_frames(VIDEO_FRAMES, tmp_path / "clip", MAX_FRAMES)
        )
    assert upload.value.status == 201
    video_id = upload.value.json()["video_id"]
    video = f"{url}/v1/videos/{video_id}"
    wait_until_enabled(page, "#v-new-object")
    assert text_of(page, "v-error") == ""
    marks = page.locator("#v-marks")
    with page.expect_response(is_prompt) as prompt:
        marks.click(position={"x": 300, "y": 200})
    assert prompt.value.status == 200

    # Busy: a propagation from elsewhere holds the session; the page's prompt is
    # a 409, explained. The hold is a real propagation, which ends by itself: on a
    # loaded machine the page's click can come after its last frame (the prompt is
    # then rightly a 200), and the check is made again with a new hold. That a held
    # session refuses every other call is tested without a race in
    # tests/engine/test_video.py; here it is what the page makes of the 409.
    for attempt in range(1, BUSY_ATTEMPTS + 1):
        with (
            httpx.Client(timeout=60, headers=AUTH) as client,
            client.stream("POST", video + "/propagate", json={}) as held,
        ):
            assert held.status_code == 200
            next(held.iter_lines())
            with page.expect_response(is_prompt) as busy:
                marks.click(position={"x": 320, "y": 220})
            if busy.value.status == 409:
                wait_for_text(page, "v-error", "The server is busy with this video")
                break
            assert busy.value.status == 200
            assert attempt < BUSY_ATTEMPTS, "the page's prompt never met the held session"

    # Stop: the stream is closed, the server stops, and what came is kept. (The
    # held propagation ends at its frame in progress: until then, Track is a 409.)
    deadline = time.monotonic() + 60
    while True:
        frames_before = _frames_propagated(url)
        record_texts(page, "v-progress-label")
        with page.expect_response(is_propagate) as tracking:
            page.click("#v-track")
        if tracking.value.status != 409:
            break
        assert time.monotonic() < deadline, "the held propagation never let go"
        wait_until_enabled(page, "#v-track")
        page.wait_for_timeout(200)
    assert tracking.value.status == 200
    wait_for_text(page, "v-progress-label", f"1 / {MAX_FRAMES} frames", timeout=TRACK_TIMEOUT_MS)
    page.keyboard.press("Escape")
    wait_for_text(page, "v-status", "Stopped after")
    assert page.is_enabled("#v-track")
    done = int(text_of(page, "v-status").split("Stopped after ")[1].split(" ")[0])
    assert 1 <= done < MAX_FRAMES
    wait_until(page, lambda: _stable(url), "the server's propagation to stop")
    assert _frames_propagated(url) - frames_before < MAX_FRAMES

    # Right after Stop the session may still be finishing its frame: the page
    # waits that out, and the prompt goes through.
    with page.expect_response(lambda r: is_prompt(r) and r.status == 200):
        marks.click(position={"x": 340, "y": 240})
    assert text_of(page, "v-error") == ""

    # Expired: the session is gone on the server; the page says so, and uploads again.
    assert httpx.delete(video, headers=AUTH).status_code == 204
    with page.expect_response(is_prompt) as gone:
        marks.click(position={"x": 360, "y": 260})
    assert gone.value.status == 404
    wait_for_text(page, "v-error", "The server no longer has this video")
    assert page.is_visible("#v-reopen")
    assert page.is_disabled("#v-track")
    with page.expect_response(is_video_upload) as again:
        page.click("#v-reopen")
    assert again.value.status == 201
    reopened = f"{url}/v1/videos/{again.value.json()['video_id']}"
    wait_until_enabled(page, "#v-new-object")
    assert page.is_hidden("#v-reopen")
    assert text_of(page, "v-error") == ""
    assert page.locator("#v-objects button").count() == 1

    # Leaving the page closes the session (a keepalive DELETE on pagehide).
    assert httpx.get(reopened, headers=AUTH).status_code == 200
    page.goto("about:blank")
    closed = process.wait_until(
        lambda: httpx.get(reopened, headers=AUTH).status_code == 404, 10, 0.1
    )
    assert closed, "the session outlived the page"

    # Chromium logs the refused requests itself; nothing else may go wrong.
    logged = ("status of 404", "status of 409", "status of 413")
    assert [e for e in page.errors if not any(s in e for s in logged)] == []
    assert all(u.startswith((url + "/", "data:", "blob:", "about:")) for u in page.urls)


def test_video_file_frames_match_the_server(page, video_server, tmp_path):
    """A phone's portrait clip (landscape frames, a 90° display matrix): the page
    shows it upright at the size the server gives, and frame i is the server's
    frame i (each frame here has its own colour)."""
    from tests.clips import rotate_mp4, write_mp4

    colours = [
        (230, 30, 30),
        (30, 200, 30),
        (30, 30, 230),
        (230, 230, 30),
        (30, 230, 230),
        (230, 30, 230),
    ]
    stored = []
    for colour in colours:
        pixels = np.full((240, 320, 3), 255, np.uint8)
        pixels[:, :160] = colour  # the left half as stored: the top once turned upright
        stored.append(pixels)
    clip = rotate_mp4(write_mp4(stored, tmp_path / "portrait.mp4", rate=24), 90)

    url = video_server.url
    page.goto(f"{url}/#token={TOKEN}")
    h264 = "() => document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.64001e\"')"
    if page.evaluate(h264) == "":
        pytest.skip("this Chromium cannot play H.264")
    page.click("#tab-video")
    with page.expect_response(is_video_upload) as upload:
        page.set_input_files("#video-file", str(clip))
    session = upload.value.json()
    assert (session["frames"], session["width"], session["height"]) == (6, 240, 320)
    assert session["fps"] == 24
    wait_until_enabled(page, "#v-new-object")
    assert "240\N{MULTIPLICATION SIGN}320 · 24 fps" in text_of(page, "video-info")
    assert text_of(page, "v-error") == ""  # no size or timing warning
    stage = page.locator("#v-stage")
    ratio = stage.bounding_box()["width"] / stage.bounding_box()["height"]
    assert ratio == pytest.approx(240 / 320, abs=0.01)

    for frame, colour in enumerate(colours):
        if frame:
            page.keyboard.press("ArrowRight")
        wait_for_text(page, "v-frame-label", f"Frame {frame + 1} / 6")
        page.wait_for_function(
            "(t) => { const v = document.getElementById('v-video');"
            " return !v.seeking && Math.abs(v.currentTime - t) < 1e-3; }",
            arg=(frame + 0.5) / 24,
        )
        page.wait_for_timeout(100)
        shot = np.asarray(Image.open(io.BytesIO(stage.screenshot())).convert("RGB")).astype(int)
        height, width = shot.shape[:2]
        middle = slice(width // 4, width * 3 // 4)
        top = shot[height // 8 : height * 3 // 8, middle].reshape(-1, 3).mean(0)
        bottom = shot[height * 5 // 8 : height * 7 // 8, middle].reshape(-1, 3).mean(0)
        assert np.abs(top - colour).max() < 40, (frame, top)
        assert np.abs(bottom - 255).max() < 40, (frame, bottom)
    assert page.errors == []


def _frames_propagated(url: str) -> int:
    return httpx.get(url + "/stats", headers=AUTH, timeout=10).json()["video"]["frames_propagated"]


def _stable(url: str) -> bool:
    """No frame propagated for half a second."""
    before = _frames_propagated(url)
    time.sleep(0.5)
    return _frames_propagated(url) == before

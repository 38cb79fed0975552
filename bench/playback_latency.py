"""From the last tracked frame to playback, in the page itself (issue 18's last measure).

In video mode, Track streams one NDJSON line per frame; the page stores and
draws each as it arrives, and Play then plays the clip from those stored
masks with no request. This measures, in one run, what the user waits for at
the end: from the moment the page handles the last streamed line to

  - **ready**: the stream over, Track and Play enabled again (`sam2:track-end`);
  - **last drawn**: the last frame's picture and masks on screen (the view
    follows the stream);

and, once Play is pressed, **first played**: the first played frame's picture
and masks on screen (`sam2:play` → `sam2:playback-frame`). Also the played
frames' spacing against the clip's rate (10 fps for frame images).

The figures come from the page's own User Timing marks (web/video.js `mark`),
collected by a PerformanceObserver: no round trip to the driver is counted.
Debian's Chromium (Playwright, headless, as the tests run it) opens the page
on a `sam2-server serve` on loopback with the tests' video model (the reduced
random-weight SAM 2 at a 256-px input, built as tests/conftest.py builds it:
tracking is quick, and what is timed is the page, not the model). The clip
is the bedroom frames from tests/data (960x540 JPEG), cycled to the length
asked; two objects are prompted on frame 0 and tracked forwards, several
times per clip length; the medians are printed.

    .venv/bin/python bench/playback_latency.py                 # about two minutes on 2 CPU cores
    .venv/bin/python bench/playback_latency.py --frames 6 30 --repeats 5
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    from playwright.sync_api import Page

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name
from run import ROOT, serve_args, started

sys.path.insert(0, str(ROOT))  # tests: the test models, and the page tests' Chromium
from tests.clips import cycled_frames
from tests.synthetic import VIDEO_TEST_OVERRIDES, write_checkpoint, write_config
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS, VIEWPORT

BEDROOM = sorted((ROOT / "tests/data/video-bedroom").glob("*.jpg"))
CLICKS = [(0.45, 0.5), (0.25, 0.35), (0.7, 0.6), (0.6, 0.25)]  # one per object, of the stage
TRACK_TIMEOUT_MS = 600_000

# Every mark the page makes, kept in order (the page keeps only the latest of each name).
COLLECT_MARKS = """
window.__marks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    if (!e.name.startsWith("sam2:")) continue;
    window.__marks.push({name: e.name, t: e.startTime, detail: e.detail});
  }
}).observe({type: "mark", buffered: true});
"""


def marks(page: Page) -> list[dict]:
    return page.evaluate("() => window.__marks")


def wait_for_mark(page: Page, name: str, after: int, timeout: float = 60_000) -> None:
    """Until the page has made mark `name` since the first `after` marks."""
    page.wait_for_function(
        "([name, after]) => window.__marks.slice(after).some((m) => m.name === name)",
        arg=[name, after],
        timeout=timeout,
        polling=20,
    )


def first(entries: list[dict], name: str, since: float = -1.0, frame: int | None = None) -> dict:
    for entry in entries:
        if entry["name"] != name or entry["t"] < since:
            continue
        if frame is None or entry["detail"]["frame"] == frame:
            return entry
    raise AssertionError(f"no {name} mark (frame {frame}) after {since}")


def run_clip(page: Page, url: str, frames: list[Path], objects: int, repeats: int) -> dict:
    """Open the clip, prompt `objects` objects on frame 0, then track and play `repeats` times."""
    page.goto(url)
    page.keyboard.press("v")
    with page.expect_response(lambda r: r.url.endswith("/v1/videos")) as opened:
        page.set_input_files("#video-file", [str(p) for p in frames])
    session = opened.value.json()
    assert session["frames"] == len(frames), session
    page.wait_for_function("() => !document.getElementById('v-new-object').disabled")
    stage = page.locator("#v-marks").bounding_box()
    for index in range(objects):
        if index:
            page.keyboard.press("n")
        x, y = CLICKS[index % len(CLICKS)]
        with page.expect_response(lambda r: r.url.endswith("/prompts")) as prompted:
            at = {"x": stage["width"] * x, "y": stage["height"] * y}
            page.locator("#v-marks").click(position=at)
        assert prompted.value.status == 200, prompted.value.text()
    last = len(frames) - 1
    runs: dict[str, list[float]] = {
        "ready": [],
        "last drawn": [],
        "first played": [],
        "track s": [],
        "interval": [],
        "objects": [],
    }
    for _ in range(repeats):
        before = len(marks(page))
        started_at = time.perf_counter()
        page.keyboard.press("t")
        wait_for_mark(page, "sam2:track-end", before, TRACK_TIMEOUT_MS)
        runs["track s"].append(time.perf_counter() - started_at)
        wait_for_mark(page, "sam2:frame-drawn", before)
        page.wait_for_function(
            "(last) => document.getElementById('v-stage').dataset.shown === String(last)", arg=last
        )
        page.click("#v-play")  # from frame 0: the view is on the last frame
        page.wait_for_function(
            "() => document.getElementById('v-play').textContent === 'Play'", timeout=120_000
        )
        entries = marks(page)[before:]
        line = first(entries, "sam2:last-frame")
        assert line["detail"]["frame"] == last, line
        ready = first(entries, "sam2:track-end", line["t"])
        drawn = first(entries, "sam2:frame-drawn", line["t"], frame=last)
        play = first(entries, "sam2:play", ready["t"])
        played = [e for e in entries if e["name"] == "sam2:playback-frame" and e["t"] >= play["t"]]
        assert [e["detail"]["frame"] for e in played] == list(range(len(frames))), played
        runs["ready"].append(ready["t"] - line["t"])
        runs["last drawn"].append(drawn["t"] - line["t"])
        runs["first played"].append(played[0]["t"] - play["t"])
        runs["interval"].extend(b["t"] - a["t"] for a, b in itertools.pairwise(played))
        runs["objects"].extend(e["detail"]["objects"] for e in played)
    return {name: values for name, values in runs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[6, 30])
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not CHROMIUM.exists():
        print("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
        return 2
    from playwright.sync_api import sync_playwright

    width, height = Image.open(BEDROOM[0]).size
    results = {}
    with tempfile.TemporaryDirectory(prefix="sam2-playback-") as tmp:
        folder = Path(tmp)
        config = write_config(folder / "video.yaml", overrides=VIDEO_TEST_OVERRIDES)
        checkpoint = write_checkpoint(folder / "video.pt", overrides=VIDEO_TEST_OVERRIDES, seed=5)
        server_args = serve_args(checkpoint, "--model-config", str(config))
        env = {"VIDEO_MAX_FRAMES": str(max(args.frames))}
        with (
            started("sam2-server", server_args, env) as server,
            sync_playwright() as playwright,
        ):
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                for count in args.frames:
                    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
                    context.add_init_script(COLLECT_MARKS)
                    page = context.new_page()
                    page.set_default_timeout(60_000)
                    frames = cycled_frames(BEDROOM, folder / f"clip-{count}", count)
                    url = server.url + "/"
                    results[count] = run_clip(page, url, frames, args.objects, args.repeats)
                    context.close()
            finally:
                browser.close()

    median = statistics.median
    print(
        f"video mode, {args.objects} objects, frames {width}x{height} JPEG, the tests' 256-px "
        f"random-weight video model; Chromium headless (software), {args.repeats} runs each"
    )
    print(f"CPU: {cpu_name()}; server and browser on the same machine")
    print(
        f"{'frames':>6} {'tracking':>9} {'last line→ready':>16} {'last line→drawn':>16} "
        f"{'Play→1st frame':>15} {'ready+1st':>10} {'played every':>13}"
    )
    for count, runs in results.items():
        both = median([a + b for a, b in zip(runs["ready"], runs["first played"], strict=True)])
        print(
            f"{count:>6} {median(runs['track s']):>8.1f}s {median(runs['ready']):>14.1f}ms "
            f"{median(runs['last drawn']):>14.1f}ms {median(runs['first played']):>13.1f}ms "
            f"{both:>8.1f}ms {median(runs['interval']):>11.1f}ms"
        )
    print("(medians; ready+1st: the last line to the first played frame, Play pressed at once)")
    for count, runs in results.items():
        each = {k: [round(v, 1) for v in runs[k]] for k in ("ready", "last drawn", "first played")}
        print(
            f"{count} frames, each run (ms): {each}; played frames {max(runs['interval']):.0f} ms "
            f"apart at most (100 ms at 10 fps); objects with masks per played frame: "
            f"{min(runs['objects'])}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

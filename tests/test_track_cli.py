"""`sam2-server track`: in-process and with --url, the engine's own video masks as PNGs.

Three bedroom frames (the video test model: 256x256 input, under a second per
frame) named 8, 9, 10 so that only a number-by-number sort gets their order
right. In-process runs go through `cli.main` in this process (torch is
already loaded); the --url run that must not import torch is a subprocess
against a real server process. Every PNG is compared with the engine's masks
for the same frames and prompts (fp32 on the CPU: bit-identical).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from sam2_server.cli import main
from sam2_server.cli.track import (
    expected_frames,
    group_prompts,
    parse_frame_box,
    parse_frame_point,
)
from sam2_server.domain import VideoPrompt
from tests.clips import write_mp4
from tests.conftest import VIDEO_FRAMES
from tests.e2e.process import Server, serving_local

PROMPTS = [
    *("--point", "0,300,200", "--point", "0,620,310:0"),
    *("--object", "2", "--box", "0,480,90,820,420"),
]
# The same prompts as the engine takes them: (object, frame, points, labels, box).
ENGINE_PROMPTS = [
    (1, 0, [[300, 200], [620, 310]], [1, 0], None),
    (2, 0, None, None, [480, 90, 820, 420]),
]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    for name, frame in zip(("8.jpg", "9.jpg", "10.jpg"), VIDEO_FRAMES, strict=False):
        shutil.copy(frame, folder / name)
    (folder / "notes.txt").write_text("not a frame")
    return folder


@pytest.fixture(scope="module")
def server(video_model) -> Iterator[Server]:
    with serving_local(video_model) as server:
        yield server


def run_cli(*args: str) -> int:
    try:
        return main(["track", *args])
    except SystemExit as exc:  # argparse's refusals
        return int(exc.code or 0)


def in_process(video_model) -> list[str]:
    return [
        *("--model-id", str(video_model.checkpoint)),
        *("--model-config", str(video_model.config), "--device", "cpu"),
    ]


def engine_masks(
    engine, prompts, *, frames=None, video=None, start=None, max_frames=None, reverse=False
) -> dict[tuple[int, int], np.ndarray]:
    """(frame, object) -> mask, from the engine's own session on the same input."""
    opened = engine.videos.open(
        engine.default_model_id,
        frames=[io.BytesIO(path.read_bytes()) for path in frames or []],
        video=None if video is None else io.BytesIO(video),
    )
    try:
        for object_id, frame_index, points, labels, box in prompts:
            engine.videos.prompt(
                opened.video_id,
                VideoPrompt(
                    frame_index=frame_index,
                    object_id=object_id,
                    points=None if points is None else np.array(points, np.float32),
                    labels=None if labels is None else np.array(labels, np.int32),
                    box=None if box is None else np.array(box, np.float32),
                ),
            )
        masks = {}
        for frame in engine.videos.propagate(opened.video_id, start, max_frames, reverse):
            for object_id, mask in zip(frame.object_ids, frame.masks, strict=True):
                masks[frame.frame_index, object_id] = mask
        return masks
    finally:
        engine.videos.close(opened.video_id)


def written(folder: Path) -> dict[tuple[int, int], np.ndarray]:
    masks = {}
    for path in sorted(folder.glob("frame-*.png")):
        _, frame, _, object_id = path.stem.split("-")
        image = Image.open(path)
        assert image.mode == "L"
        pixels = np.asarray(image)
        assert set(np.unique(pixels)) <= {0, 255}
        masks[int(frame), int(object_id)] = pixels == 255
    return masks


def assert_masks(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for key, mask in expected.items():
        np.testing.assert_array_equal(actual[key], mask, err_msg=str(key))


def sessions_open(server: Server) -> int:
    return httpx.get(server.url + "/stats", timeout=10).json()["video"]["sessions"]


@pytest.fixture(scope="module")
def local_run(clip: Path, video_model, tmp_path_factory) -> tuple[Path, str]:
    output = tmp_path_factory.mktemp("local")
    capture = io.StringIO()
    stdout, sys.stdout = sys.stdout, capture
    try:
        assert run_cli(str(clip), *PROMPTS, *in_process(video_model), "-o", str(output)) == 0
    finally:
        sys.stdout = stdout
    return output, capture.getvalue()


def test_in_process_writes_every_frame_and_object(
    local_run: tuple[Path, str], clip: Path, video_engine
) -> None:
    output, stdout = local_run
    frames = [clip / "8.jpg", clip / "9.jpg", clip / "10.jpg"]  # number order, not name order
    expected = engine_masks(video_engine, ENGINE_PROMPTS, frames=frames)
    assert sorted(p.name for p in output.iterdir()) == [
        f"frame-{f:05d}-obj-{o}.png" for f in range(3) for o in (1, 2)
    ]
    assert_masks(written(output), expected)
    assert all(mask.any() for mask in expected.values())  # tracked, not trivially empty
    lines = stdout.strip().splitlines()
    for frame_index, line in enumerate(lines[:3]):
        shares = [100 * expected[frame_index, o].mean() for o in (1, 2)]
        assert line == (
            f"frame {frame_index} ({frame_index + 1}/3): "
            f"obj 1 {shares[0]:.1f}%, obj 2 {shares[1]:.1f}%"
        )
    assert lines[3] == f"tracked 2 objects over 3 frames -> {output} (6 PNGs)"


def test_url_mode_writes_the_same_files_without_torch(
    local_run: tuple[Path, str], clip: Path, server: Server, tmp_path: Path
) -> None:
    command = (
        "import sys; sys.modules['torch'] = None; from sam2_server.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    environment = {k: v for k, v in os.environ.items() if k not in ("AUTH_TOKEN", "MODEL_ID")}
    url_args = ["--url", server.url, "-o", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-c", command, "track", str(clip), *PROMPTS, *url_args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )
    assert done.returncode == 0, done.stderr
    output, stdout = local_run
    assert done.stdout.replace(str(tmp_path), "OUT") == stdout.replace(str(output), "OUT")
    names = sorted(p.name for p in output.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    for name in names:
        assert (tmp_path / name).read_bytes() == (output / name).read_bytes(), name
    assert sessions_open(server) == 0  # the CLI closed its session


def test_a_video_file_in_reverse(server: Server, video_engine, tmp_path: Path, capsys) -> None:
    clip = tmp_path / "clip.mp4"
    frames = [np.asarray(Image.open(path).convert("RGB"))[:240, :320] for path in VIDEO_FRAMES[:4]]
    write_mp4(frames, clip)
    output = tmp_path / "out"
    args = ["--object", "7", "--box", "3,40,30,200,180", "--point", "3,100,100"]
    code = run_cli(str(clip), *args, "--reverse", "--max-frames", "1", "--url", server.url)
    assert code == 2  # -o is required
    capsys.readouterr()
    code = run_cli(
        str(clip), *args, "--reverse", "--max-frames", "1", "--url", server.url, "-o", str(output)
    )
    assert code == 0, capsys.readouterr().err
    expected = engine_masks(
        video_engine,
        [(7, 3, [[100, 100]], [1], [40, 30, 200, 180])],
        video=clip.read_bytes(),
        max_frames=1,
        reverse=True,
    )
    assert sorted(expected) == [(2, 7), (3, 7)]
    assert_masks(written(output), expected)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["frame 3 (1/2)", "frame 2 (2/2)"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give at least one --point or --box"),
        (["--point", "0.5,1,2"], "the frame F must be an integer"),
        (["--point", "1,2"], "expected F,X,Y[:LABEL]"),
        (["--point", "0,1,2:3"], "label must be 1"),
        (["--box", "0,1,2,3"], "expected F,X0,Y0,X1,Y1"),
        (["--object", "-1", "--box", "0,1,2,3,4"], "expected an integer from 0"),
        (["--box", "0,1,2,3,4", "--box", "0,5,6,7,8"], "two --box on frame 0"),
        (["--point", "0,1,1", "--token", "t"], "--token needs --url"),
        (["--point", "0,1,1", "--url", "{server}", "--device", "cpu"], "in-process only"),
        (["--point", "0,1,1", "--url", "http://127.0.0.1:9"], "cannot talk to"),
        (["--point", "5,1,1", "--url", "{server}"], "HTTP 400: frame_index"),
        (["--point", "0,1e12,1", "--url", "{server}"], "HTTP 400: points"),
        (["--point", "0,1,1", "--max-frames", "-2"], "expected an integer >= 0"),
    ],
)
def test_bad_arguments_are_one_line_and_status_2(
    args: list[str], message: str, clip: Path, server: Server, tmp_path: Path, capsys
) -> None:
    args = [arg.replace("{server}", server.url) for arg in args]
    assert run_cli(str(clip), *args, "-o", str(tmp_path / "out")) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err
    assert err.startswith("sam2-server track: ")
    assert out == ""
    assert sessions_open(server) == 0  # also after a refused prompt


def test_bad_inputs(tmp_path: Path, clip: Path, video_model, server: Server, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    not_video = tmp_path / "video.mp4"
    not_video.write_bytes(b"\0" * 1000)
    cases = [
        (tmp_path / "missing.mp4", [], "no such file or folder"),
        (empty, [], "holds no frame images"),
        (not_video, ["--url", server.url], "HTTP 400: video:"),
        # In-process: the engine's own 400, after the model loaded and the session opened.
        (clip, [*in_process(video_model), "--start-frame", "3"], "start_frame_index: 3"),
    ]
    for source, extra, message in cases:
        code = run_cli(str(source), "--point", "0,1,1", *extra, "-o", str(tmp_path / "out"))
        _, err = capsys.readouterr()
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1, err
        assert message in err, err
        assert "Traceback" not in err


def test_prompt_syntax_and_grouping() -> None:
    assert parse_frame_point("3,1.5,2") == (3, 1.5, 2.0, 1)
    assert parse_frame_point("0, 1,2:0") == (0, 1.0, 2.0, 0)
    assert parse_frame_box("2,0,0,10,20.5") == (2, 0.0, 0.0, 10.0, 20.5)
    prompts = group_prompts(
        [
            (1, "point", (0, 1.0, 2.0, 1)),
            (2, "box", (0, 0.0, 0.0, 5.0, 5.0)),
            (1, "point", (0, 3.0, 4.0, 0)),
            (1, "box", (4, 1.0, 1.0, 9.0, 9.0)),
            (2, "point", (0, 2.0, 2.0, 1)),
        ]
    )
    assert [(p.object_id, p.frame_index, p.points, p.labels, p.box) for p in prompts] == [
        (1, 0, [(1.0, 2.0), (3.0, 4.0)], [1, 0], None),
        (2, 0, [(2.0, 2.0)], [1], (0.0, 0.0, 5.0, 5.0)),
        (1, 4, [], [], (1.0, 1.0, 9.0, 9.0)),
    ]
    assert expected_frames(10, 3, None, False) == 7
    assert expected_frames(10, 3, 2, False) == 3
    assert expected_frames(10, 3, None, True) == 4
    assert expected_frames(10, 3, 1, True) == 2


def test_counts_read_in_english_number():
    from sam2_server.cli.common import counted

    assert [counted(n, "object") for n in (0, 1, 2)] == ["0 objects", "1 object", "2 objects"]

"""`sam2-server automatic`: in-process and with --url, the engine's automatic masks as files.

A 96x64 photo and a 2x2 grid with the thresholds relaxed (random weights
give masks the defaults would drop), so a run costs well under a second
past the model load. The in-process run goes through `cli.main` in this
process; the --url run that must not import torch is a subprocess against a
real server process, and must write the same files byte for byte.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2_server.cli import main
from sam2_server.cli.overlay import distinct_colours
from sam2_server.codecs.automatic import rle_to_mask
from sam2_server.domain import AutomaticParams
from tests.conftest import image_bytes
from tests.e2e.process import Server, serving_local

TOKEN = "automatic-cli-token"
OPTIONS = {
    "points_per_side": 2,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
}
FLAGS = [f"--{name.replace('_', '-')}={value}" for name, value in OPTIONS.items()]
RECORD_FIELDS = ("area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box")


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "small.png"
    Image.open(io.BytesIO(image_bytes("groceries.jpg"))).convert("RGB").resize((96, 64)).save(path)
    return path


@pytest.fixture(scope="module")
def server(reduced_model) -> Iterator[Server]:
    with serving_local(reduced_model, AUTH_TOKEN=TOKEN) as server:
        yield server


def run_cli(*args: str) -> int:
    try:
        return main(["automatic", *args])
    except SystemExit as exc:  # argparse's refusals
        return int(exc.code or 0)


def in_process(model) -> list[str]:
    return [
        *("--model-id", str(model.checkpoint)),
        *("--model-config", str(model.config), "--device", "cpu"),
    ]


@pytest.fixture(scope="module")
def local_run(photo: Path, reduced_model, tmp_path_factory) -> tuple[Path, str]:
    output = tmp_path_factory.mktemp("local")
    capture = io.StringIO()
    stdout, sys.stdout = sys.stdout, capture
    try:
        assert run_cli(str(photo), *FLAGS, *in_process(reduced_model), "-o", str(output)) == 0
    finally:
        sys.stdout = stdout
    return output, capture.getvalue()


def test_in_process_writes_the_engines_masks(
    local_run: tuple[Path, str], photo: Path, reduced_engine
) -> None:
    output, stdout = local_run
    model = reduced_engine.default_model_id
    info = reduced_engine.add_image(model, photo.read_bytes())
    _, records = reduced_engine.automatic_masks(model, info.image_id, AutomaticParams(**OPTIONS))
    count = len(records)
    assert count == 12  # 4 points x 3 candidates, none dropped
    names = [f"mask-{index:03d}.png" for index in range(count)]
    assert sorted(p.name for p in output.iterdir()) == sorted([*names, "overlay.png", "masks.json"])
    masks = [rle_to_mask(record.segmentation) for record in records]
    for name, mask in zip(names, masks, strict=True):
        image = Image.open(output / name)
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), np.where(mask, 255, 0), err_msg=name)

    summary = json.loads((output / "masks.json").read_text())
    assert summary["image"] == str(photo)
    assert (summary["width"], summary["height"]) == (96, 64)
    assert summary["parameters"] == asdict(AutomaticParams(**OPTIONS))
    assert summary["masks"] == [
        {"file": name, **{field: getattr(record, field) for field in RECORD_FIELDS}}
        for name, record in zip(names, records, strict=True)
    ]
    assert stdout == (
        f"{count} masks -> {output} (mask-000.png ... {names[-1]}, overlay.png, masks.json)\n"
    )

    # The overlay: the photo where no mask is; the smallest mask on top in its own colour.
    overlay = np.asarray(Image.open(output / "overlay.png"))
    pixels = np.asarray(Image.open(photo).convert("RGB"))
    assert overlay.shape == pixels.shape
    covered = np.any(masks, axis=0)
    np.testing.assert_array_equal(overlay[~covered], pixels[~covered])
    assert (overlay[covered] != pixels[covered]).any(axis=-1).mean() > 0.9
    smallest = int(np.argmin([record.area for record in records]))
    colour = distinct_colours(count)[smallest]
    assert (overlay[masks[smallest]] == colour).all(axis=-1).any()  # its outline


def test_url_mode_writes_the_same_files_without_torch(
    local_run: tuple[Path, str], photo: Path, server: Server, tmp_path: Path
) -> None:
    command = (
        "import sys; sys.modules['torch'] = None; from sam2_server.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    environment = {k: v for k, v in os.environ.items() if k not in ("AUTH_TOKEN", "MODEL_ID")}
    url_args = ["--url", server.url, "-o", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-c", command, "automatic", str(photo), *FLAGS, *url_args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**environment, "AUTH_TOKEN": TOKEN},  # --token defaults to it
    )
    assert done.returncode == 0, done.stderr
    output, stdout = local_run
    assert done.stdout.replace(str(tmp_path), "OUT") == stdout.replace(str(output), "OUT")
    names = sorted(p.name for p in output.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    for name in names:
        assert (tmp_path / name).read_bytes() == (output / name).read_bytes(), name


def test_no_mask_kept_says_what_to_change(photo: Path, server: Server, tmp_path: Path, capsys):
    flags = ["--points-per-side", "1", "--pred-iou-thresh", "1", "--single"]
    code = run_cli(str(photo), *flags, "--url", server.url, "--token", TOKEN, "-o", str(tmp_path))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"0 masks -> {tmp_path} (overlay.png, masks.json); lower ")
    assert json.loads((tmp_path / "masks.json").read_text())["masks"] == []
    overlay = np.asarray(Image.open(tmp_path / "overlay.png"))
    np.testing.assert_array_equal(overlay, np.asarray(Image.open(photo).convert("RGB")))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--points-per-side", "0"], "points_per_side must be at least 1; got 0."),
        (["--points-per-side", "x"], "expected a finite int"),
        (["--pred-iou-thresh", "1.5"], "pred_iou_thresh must be between 0 and 1; got 1.5."),
        (["--stability-score-thresh", "nan"], "expected a finite float"),
        (["--crop-overlap-ratio", "1"], "below 1"),
        (
            ["--points-per-side=4", "--crop-n-layers=2", "--crop-n-points-downscale-factor=4"],
            "leaves the last crop layer without points",
        ),
        (["--token", "t"], "--token needs --url"),
        (["--url", "{server}", "--token", "wrong"], "HTTP 401: Invalid bearer token."),
        (
            ["--url", "{server}", "--token", TOKEN, "--points-per-side", "65"],
            "HTTP 400: points_per_side 65 is over this server's limit",
        ),
        (["--url", "http://127.0.0.1:9"], "cannot talk to"),
        (["--min-mask-region-area", "-1"], "min_mask_region_area must be at least 0"),
    ],
)
def test_bad_arguments_are_one_line_and_status_2(
    args: list[str], message: str, photo: Path, server: Server, tmp_path: Path, capsys
) -> None:
    args = [arg.replace("{server}", server.url) for arg in args]
    assert run_cli(str(photo), *args, "-o", str(tmp_path / "out")) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err
    assert err.startswith("sam2-server automatic: ")
    assert out == ""


def test_a_missing_image(tmp_path: Path, capsys) -> None:
    assert run_cli(str(tmp_path / "missing.png"), "-o", str(tmp_path / "out")) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"sam2-server automatic: cannot read image {tmp_path / 'missing.png'}")
    assert len(err.strip().splitlines()) == 1, err
    assert out == ""


@pytest.mark.parametrize("where", ["url", "in-process"])
def test_a_terminal_shows_a_progress_bar(
    where: str, photo: Path, server: Server, reduced_model, tmp_path: Path
) -> None:
    """With stderr on a terminal, a bar counts the batches of grid points (from the
    NDJSON progress lines with --url, from the engine in-process); the files are the
    same as without it."""
    flags = [*FLAGS, "--points-per-batch", "1"]  # four batches
    target = ["--url", server.url] if where == "url" else in_process(reduced_model)
    environment = {k: v for k, v in os.environ.items() if k not in ("AUTH_TOKEN", "MODEL_ID")}
    environment["AUTH_TOKEN"] = TOKEN
    main_, terminal = pty.openpty()
    # A terminal 100 columns wide (a new pty is 0 x 0: tqdm would draw nothing).
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    command = [sys.executable, "-m", "sam2_server.cli", "automatic", str(photo), *flags]
    try:
        process = subprocess.Popen(
            [*command, *target, "-o", str(tmp_path / "bar")],
            stdout=subprocess.PIPE,
            stderr=terminal,
            env=environment,
        )
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(main_, 4096)
            except OSError:  # the other end closed: the process is done with it
                break
            if not chunk:
                break
            shown += chunk
        stdout, _ = process.communicate(timeout=120)
    finally:
        os.close(main_)
    assert process.returncode == 0, shown.decode(errors="replace")
    text = shown.decode(errors="replace")
    assert "generating masks" in text
    assert "4/4" in text, text
    assert "batch" in text
    assert "Traceback" not in text
    assert stdout.decode().startswith("12 masks -> ")
    plain = tmp_path / "plain"
    command = [str(photo), *flags, *target, "-o", str(plain)]
    if where == "url":
        command += ["--token", TOKEN]
    assert run_cli(*command) == 0
    for name in sorted(p.name for p in plain.iterdir()):
        assert (tmp_path / "bar" / name).read_bytes() == (plain / name).read_bytes(), name

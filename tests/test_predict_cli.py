"""`sam2-server predict`, run as a user runs it: a subprocess, in-process and with --url.

Both ways must write the engine's own answer (the reduced model, fp32 on the
CPU, bit-exact), the same files byte for byte; `--url` must never import
torch; every bad argument is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2_server.cli.common import UsageError
from sam2_server.cli.predict import load_mask_input, parse_box, parse_point
from sam2_server.client import pack
from sam2_server.domain import Prompt
from tests.conftest import DATA, image_bytes
from tests.e2e.process import Server, serving_local

TOKEN = "predict-token"
IMAGE = DATA / "groceries.jpg"  # 800 x 534
POINTS = ["--point", "420,300", "--point", "200.5,150:0"]
BOXES = ["--box", "50,60,400,380", "--box", "380,120,780,500"]


@pytest.fixture(scope="module")
def server(reduced_model) -> Iterator[Server]:
    with serving_local(reduced_model, AUTH_TOKEN=TOKEN) as server:
        yield server


def predict(*args: str, env: dict[str, str] | None = None, block_torch: bool = False):
    """`python -m sam2_server.cli predict ARGS`; with block_torch, importing torch fails."""
    command = [sys.executable]
    if block_torch:
        command += [
            "-c",
            "import sys; sys.modules['torch'] = None; from sam2_server.cli import main; "
            "sys.exit(main(sys.argv[1:]))",
        ]
    else:
        command += ["-m", "sam2_server.cli"]
    environment = {k: v for k, v in os.environ.items() if k not in ("AUTH_TOKEN", "MODEL_ID")}
    return subprocess.run(
        [*command, "predict", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**environment, **(env or {})},
    )


def engine_prediction(engine, **prompt):
    return engine.segment(
        engine.default_model_id, image_bytes("groceries.jpg"), Prompt(return_logits=False, **prompt)
    )


def printed(stdout: str) -> list[tuple[str, np.float32]]:
    """The (file name, score) lines."""
    lines = [line.rsplit(" ", 1) for line in stdout.strip().splitlines()]
    return [(Path(path).name, np.float32(score)) for path, score in lines]


def png(path: Path) -> np.ndarray:
    image = Image.open(path)
    assert image.mode == "L"
    return np.asarray(image)


@pytest.fixture(scope="module")
def local_run(reduced_model, tmp_path_factory) -> Path:
    """The in-process run: the model loads in the subprocess from a checkpoint + config."""
    output = tmp_path_factory.mktemp("local")
    done = predict(
        str(IMAGE),
        *POINTS,
        "--model-id",
        str(reduced_model.checkpoint),
        "--device",
        "cpu",
        "--output",
        str(output),
        env={"MODEL_CONFIG": str(reduced_model.config)},
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    (output / "stdout.txt").write_text(done.stdout)
    return output


def test_in_process_writes_the_engines_masks_overlay_and_scores(
    local_run: Path, reduced_engine
) -> None:
    expected = engine_prediction(
        reduced_engine,
        point_coords=np.array([[420, 300], [200.5, 150]], dtype=np.float64),
        point_labels=np.array([1, 0]),
    )
    lines = printed((local_run / "stdout.txt").read_text())
    assert lines == [(f"mask-{i}.png", expected.scores[i]) for i in range(3)]
    for i in range(3):
        mask = png(local_run / f"mask-{i}.png")
        np.testing.assert_array_equal(mask, np.where(expected.masks[i] > 0, 255, 0))
    np.testing.assert_array_equal(np.load(local_run / "logits.npy"), expected.logits)
    overlay = Image.open(local_run / "overlay.png")
    assert (overlay.mode, overlay.size) == ("RGB", (800, 534))
    # Tinted inside the best mask, untouched outside it.
    photo = np.asarray(Image.open(IMAGE).convert("RGB"))
    tinted = np.asarray(overlay) != photo
    best = expected.masks[0] > 0
    assert tinted[best].any(axis=-1).mean() > 0.9
    assert not tinted[~best].any()


def test_url_mode_writes_the_same_files_without_torch(
    local_run: Path, server: Server, tmp_path: Path
) -> None:
    done = predict(
        str(IMAGE),
        *POINTS,
        "--url",
        server.url,
        "-o",
        str(tmp_path),
        env={"AUTH_TOKEN": TOKEN},  # --token defaults to it
        block_torch=True,
    )
    assert done.returncode == 0, done.stderr
    assert printed(done.stdout) == printed((local_run / "stdout.txt").read_text())
    for name in ("mask-0.png", "mask-1.png", "mask-2.png", "overlay.png", "logits.npy"):
        assert (tmp_path / name).read_bytes() == (local_run / name).read_bytes(), name


def test_several_boxes_name_files_per_object(server: Server, tmp_path: Path, reduced_engine):
    done = predict(str(IMAGE), *BOXES, "--url", server.url, "--token", TOKEN, "-o", str(tmp_path))
    assert done.returncode == 0, done.stderr
    expected = engine_prediction(
        reduced_engine, box=np.array([[50, 60, 400, 380], [380, 120, 780, 500]], np.float64)
    )
    assert printed(done.stdout) == [
        (f"mask-{b}-{c}.png", expected.scores[b, c]) for b in range(2) for c in range(3)
    ]
    for b in range(2):
        for c in range(3):
            mask = png(tmp_path / f"mask-{b}-{c}.png")
            np.testing.assert_array_equal(mask, np.where(expected.masks[b, c] > 0, 255, 0))
    assert Image.open(tmp_path / "overlay.png").size == (800, 534)
    assert np.load(tmp_path / "logits.npy").shape == (2, 3, 256, 256)


def test_mask_input_from_npy_or_json_and_single(
    local_run: Path, server: Server, tmp_path: Path, reduced_engine
) -> None:
    logits = np.load(local_run / "logits.npy")
    as_json = tmp_path / "logits.json"
    as_json.write_text(json.dumps(logits[0].tolist()))  # a Livepeer answer's slice, 256x256
    expected = engine_prediction(
        reduced_engine,
        point_coords=np.array([[420, 300]], dtype=np.float64),
        point_labels=np.array([1]),
        mask_input=logits[:1],
        multimask_output=False,
    )
    outputs = []
    for source in (local_run / "logits.npy", as_json):  # C x 256 x 256: its first is used
        output = tmp_path / source.suffix[1:]
        done = predict(
            str(IMAGE),
            "--point",
            "420,300",
            "--mask-input",
            str(source),
            "--single",
            "--url",
            server.url,
            "--token",
            TOKEN,
            "-o",
            str(output),
        )
        assert done.returncode == 0, done.stderr
        assert printed(done.stdout) == [("mask-0.png", expected.scores[0])]
        np.testing.assert_array_equal(
            png(output / "mask-0.png"), np.where(expected.masks[0] > 0, 255, 0)
        )
        assert not (output / "mask-1.png").exists()
        outputs.append(output)
    assert (outputs[0] / "mask-0.png").read_bytes() == (outputs[1] / "mask-0.png").read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--point", "1;2"], "expected X,Y[:LABEL]"),
        (["--point", "1,2:7"], "label must be 1"),
        (["--box", "1,2,3"], "expected X0,Y0,X1,Y1"),
        (["--token", "t"], "--token needs --url"),
        (["--mask-input", "/no/such/file.npy"], "cannot read --mask-input"),
        (["--mask-input", str(DATA / "README.md")], "cannot read --mask-input"),
        (["--box", "1,2,3,4", "--box", "5,6,7,8", "--point", "1,1"], "several --box"),
        (["--url", "http://127.0.0.1:9", "--point", "1,1"], "cannot talk to"),
        (["--url", "http://127.0.0.1:9", "--device", "cpu"], "in-process only"),
        (["--url", "{server}", "--token", "wrong"], "HTTP 401: Invalid bearer token."),
        (["--url", "{server}", "--token", TOKEN, "--point", "1e12,1"], "HTTP 400"),
    ],
)
def test_bad_arguments_are_one_line_and_status_2(
    args: list[str], message: str, server: Server, tmp_path: Path
) -> None:
    args = [arg.replace("{server}", server.url) for arg in args]
    done = predict(str(IMAGE), *args, "-o", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr
    assert done.stdout == ""


def test_missing_image_and_output(tmp_path: Path) -> None:
    for args in ([str(tmp_path / "nope.jpg"), "-o", str(tmp_path)], [str(IMAGE)]):
        done = predict(*args)
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# -- the pieces, in this process -----------------------------------------------------------


def test_point_and_box_syntax() -> None:
    assert parse_point("1,2") == (1.0, 2.0, 1)
    assert parse_point("1.5, 2:0") == (1.5, 2.0, 0)
    assert parse_point("1,2:") == (1.0, 2.0, 1)  # an empty label is the default
    assert parse_box("0,0,10.5,20") == (0.0, 0.0, 10.5, 20.0)
    for bad in ("1", "1,2,3", "a,b", "inf,1", "nan,1"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            parse_point(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="expected"):
        parse_box("1,2,3,4,5")


def test_mask_input_files(tmp_path: Path) -> None:
    logits = np.random.default_rng(1).normal(size=(3, 256, 256)).astype(np.float32)
    sources = {
        "plain.npy": lambda p: np.save(p, logits[0]),
        "one.npy": lambda p: np.save(p, logits[:1]),
        "three.npy": lambda p: np.save(p, logits),
        "slice.json": lambda p: p.write_text(json.dumps(logits[0].tolist())),
        "wrapped.json": lambda p: p.write_text(json.dumps(logits[:1].tolist())),
        "livepeer.json": lambda p: p.write_text(
            json.dumps({"logits": json.dumps(logits.tolist())})
        ),
        "native.json": lambda p: p.write_text(json.dumps({"logits": pack(logits)})),
    }
    for name, write in sources.items():
        write(tmp_path / name)
        loaded = load_mask_input(str(tmp_path / name))
        assert loaded.shape == (1, 256, 256), name
        assert loaded.tobytes() == logits[:1].tobytes(), name
    np.save(tmp_path / "small.npy", np.zeros((64, 64), np.float32))
    with pytest.raises(UsageError, match="256x256"):
        load_mask_input(str(tmp_path / "small.npy"))


def test_model_id_names_an_edgetam_repository_too(hf_edgetam, edgetam_engine, tmp_path) -> None:
    """`--model-id` takes either family: EdgeTAM by its repo id (from the HF cache,
    offline), in-process; the masks and scores are the engine's for that model."""
    done = predict(
        str(IMAGE), *POINTS, "--model-id", hf_edgetam, "--device", "cpu", "-o", str(tmp_path)
    )
    assert done.returncode == 0, done.stderr
    prompt = Prompt(
        point_coords=np.array([[420, 300], [200.5, 150]], dtype=np.float64),
        point_labels=np.array([1, 0]),
        return_logits=False,
    )
    expected = edgetam_engine.segment(hf_edgetam, image_bytes("groceries.jpg"), prompt)
    lines = printed(done.stdout)
    assert [name for name, _ in lines] == [f"mask-{i}.png" for i in range(3)]
    np.testing.assert_allclose([score for _, score in lines], expected.scores, atol=1e-6)
    for i in range(3):
        mask = png(tmp_path / f"mask-{i}.png")
        assert mask.any()
        np.testing.assert_array_equal(mask, np.where(expected.masks[i] > 0, 255, 0))

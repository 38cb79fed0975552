"""Several models: presence checks, lazy single-flight loads, failures per model with retry,
LRU unloading by weight bytes, cancellation, and the header-only image probe.

The "models" are copies of the reduced random-weight checkpoint under other
file names: same weights, so any of them must answer exactly as `reduced_engine`.
"""

from __future__ import annotations

import io
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image
from sam2.sam2_image_predictor import SAM2ImagePredictor

import sam2_server.engine.loading as loading_module
from sam2_server.api.errors import headers_of, status_of
from sam2_server.config import Settings
from sam2_server.domain import Prediction, Prompt, Work
from sam2_server.engine import Engine
from sam2_server.engine import registry as registry_module
from sam2_server.engine.models import ModelLoadError
from sam2_server.engine.registry import ModelRegistry
from sam2_server.errors import Cancelled, ServiceError

PROMPT = Prompt(point_coords=np.array([[30.0, 20.0]]), point_labels=np.array([1]))


def png(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def copies(reduced_model, tmp_path_factory) -> dict[str, str]:
    """Two served names for the same reduced checkpoint, and two that are not there."""
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for name in ("a", "b"):
        path = folder / f"{name}.pt"
        shutil.copyfile(reduced_model.checkpoint, path)
        paths[name] = str(path)
    paths["missing"] = str(folder / "missing.pt")
    paths["missing2"] = str(folder / "missing2.pt")
    return paths


def make_engine(reduced_model, *model_ids: str, **settings) -> Engine:
    return Engine(
        Settings(
            model_ids=model_ids,
            model_config=str(reduced_model.config),
            device="cpu",
            **settings,
        )
    )


def assert_same(a: Prediction, b: Prediction) -> None:
    for x, y in zip((a.masks, a.scores, a.logits), (b.masks, b.scores, b.logits), strict=True):
        np.testing.assert_array_equal(x, y)


def states(engine: Engine) -> dict[str, str]:
    return {model_id: info["state"] for model_id, info in engine.stats()["models"].items()}


@pytest.fixture
def count_builds(monkeypatch) -> list[str]:
    """Every full model load, by model id (build_model as the engine calls it)."""
    built: list[str] = []
    original = loading_module.build_model

    def counting(spec, checkpoint, device):
        built.append(spec.model_id)
        return original(spec, checkpoint, device)

    monkeypatch.setattr(loading_module, "build_model", counting)
    return built


# -- several models through the engine -------------------------------------------------------


def test_missing_model_is_unavailable_and_the_others_serve_lazily(
    reduced_model, reduced_engine, copies, count_builds
):
    a, b, missing = copies["a"], copies["b"], copies["missing"]
    engine = make_engine(reduced_model, a, missing, b)
    failures: list[tuple[str, str]] = []
    engine.on_load_error = lambda model_id, reason: failures.append((model_id, reason))
    assert engine.status == "LOADING"
    engine.load()

    assert engine.status == "OK"
    assert count_builds == [a]  # the default only; b waits for its first request
    assert states(engine) == {a: "loaded", missing: "error", b: "not loaded"}
    assert list(engine.unavailable()) == [missing]
    assert "no checkpoint file" in engine.unavailable()[missing]
    assert [model_id for model_id, _ in failures] == [missing]
    assert missing in (engine.error or "")

    with pytest.raises(ServiceError) as info:
        engine.segment(missing, png(1), PROMPT)
    assert status_of(info.value) == 503
    assert info.value.message.startswith(f"{missing} is unavailable: ")
    assert "Retry-After" not in headers_of(info.value)

    data = png(2)
    expected = reduced_engine.segment(reduced_engine.default_model_id, data, PROMPT)
    assert_same(engine.segment(a, data, PROMPT), expected)
    assert_same(engine.segment(b, data, PROMPT), expected)
    assert count_builds == [a, b]
    assert states(engine)[b] == "loaded"
    assert engine.stats()["models"][b]["bytes"] > 0
    assert engine.status == "OK"


def test_every_model_missing_is_error(reduced_model, copies):
    engine = make_engine(reduced_model, copies["missing"], copies["missing2"])
    with pytest.raises(ModelLoadError):
        engine.load()
    assert engine.status == "ERROR"
    assert set(engine.unavailable()) == {copies["missing"], copies["missing2"]}
    assert copies["missing"] in (engine.error or "")
    assert copies["missing2"] in (engine.error or "")


def test_missing_default_leaves_the_others_serving(reduced_model, copies, count_builds):
    engine = make_engine(reduced_model, copies["missing"], copies["b"])
    engine.load()
    assert engine.status == "OK"
    assert count_builds == []
    with pytest.raises(ServiceError) as info:
        engine.segment(engine.default_model_id, png(3), PROMPT)
    assert status_of(info.value) == 503
    assert engine.segment(copies["b"], png(3), PROMPT).masks.shape == (3, 64, 96)


def test_a_model_that_fails_on_first_use_is_unavailable_alone(reduced_model, copies, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint at all")  # present: it fails only when loaded
    engine = make_engine(reduced_model, copies["a"], str(broken))
    failures: list[tuple[str, str]] = []
    engine.on_load_error = lambda model_id, reason: failures.append((model_id, reason))
    engine.load()
    assert states(engine)[str(broken)] == "not loaded"
    assert failures == []

    with pytest.raises(ServiceError) as info:
        engine.segment(str(broken), png(4), PROMPT)
    assert status_of(info.value) == 503
    assert info.value.message.startswith(f"{broken} is unavailable: ")
    assert "\n" not in info.value.message
    assert [model_id for model_id, _ in failures] == [str(broken)]
    assert states(engine) == {copies["a"]: "loaded", str(broken): "error"}
    assert engine.status == "OK"
    engine.segment(copies["a"], png(4), PROMPT)  # still serving


def test_failed_model_is_retried_after_the_backoff(reduced_model, copies, tmp_path, monkeypatch):
    late = tmp_path / "late.pt"
    engine = make_engine(reduced_model, copies["a"], str(late))
    failures: list[str] = []
    engine.on_load_error = lambda model_id, reason: failures.append(model_id)
    engine.load()
    assert failures == [str(late)]

    shutil.copyfile(copies["a"], late)  # the operator fixes it
    with pytest.raises(ServiceError):  # within the backoff: the recorded failure, no load
        engine.segment(str(late), png(5), PROMPT)
    assert failures == [str(late)]
    assert engine.stats()["model_memory"]["loads"] == 1

    monkeypatch.setattr(registry_module, "LOAD_RETRY_S", 0.0)  # the backoff has passed
    engine.segment(str(late), png(5), PROMPT)
    assert states(engine)[str(late)] == "loaded"
    assert engine.unavailable() == {}
    assert engine.error is None


def test_concurrent_first_requests_load_a_model_once(
    reduced_model, copies, count_builds, monkeypatch
):
    a, b = copies["a"], copies["b"]
    engine = make_engine(reduced_model, a, b)
    engine.load()
    counting = loading_module.build_model

    def slow(spec, checkpoint, device):  # every request arrives while the load runs
        time.sleep(0.5)
        return counting(spec, checkpoint, device)

    monkeypatch.setattr(loading_module, "build_model", slow)
    start = threading.Barrier(4)
    results: list[Prediction] = []

    def worker() -> None:
        start.wait()
        results.append(engine.segment(b, png(6), PROMPT))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    assert count_builds == [a, b]
    for result in results[1:]:
        assert_same(result, results[0])


def test_least_recently_used_model_is_unloaded_past_the_budget(
    reduced_model, reduced_engine, copies, count_builds
):
    one_model = reduced_engine.stats()["models"][reduced_engine.default_model_id]["bytes"]
    a, b = copies["a"], copies["b"]
    engine = make_engine(reduced_model, a, b, model_memory_bytes=int(one_model * 1.5))
    engine.load()
    cached, fresh = png(7), png(8)
    first = engine.segment(a, cached, PROMPT)

    engine.segment(b, png(9), PROMPT)  # loading b unloads a
    assert states(engine) == {a: "not loaded", b: "loaded"}
    memory = engine.stats()["model_memory"]
    assert memory["evictions"] == 1
    assert memory["bytes"] == one_model <= memory["max_bytes"]

    encoded = engine.encoder.encoded_images
    assert_same(engine.segment(a, cached, PROMPT), first)  # reloaded; its embedding kept
    assert engine.encoder.encoded_images == encoded
    assert_same(
        engine.segment(a, fresh, PROMPT),
        reduced_engine.segment(reduced_engine.default_model_id, fresh, PROMPT),
    )
    assert states(engine) == {a: "loaded", b: "not loaded"}
    assert count_builds == [a, b, a]


def test_a_request_keeps_its_model_while_it_is_unloaded(
    reduced_model, reduced_engine, copies, monkeypatch
):
    one_model = reduced_engine.stats()["models"][reduced_engine.default_model_id]["bytes"]
    a, b = copies["a"], copies["b"]
    engine = make_engine(reduced_model, a, b, model_memory_bytes=one_model)
    engine.load()
    original = SAM2ImagePredictor.set_image
    encoding, release = threading.Event(), threading.Event()

    def first_call_waits(self, image):
        if not encoding.is_set():
            encoding.set()
            assert release.wait(30)
        return original(self, image)

    monkeypatch.setattr(SAM2ImagePredictor, "set_image", first_call_waits)
    data = png(10)
    results: list[Prediction] = []
    slow = threading.Thread(target=lambda: results.append(engine.segment(a, data, PROMPT)))
    slow.start()
    assert encoding.wait(30)
    engine.segment(b, png(11), PROMPT)  # unloads a under the request's feet
    assert states(engine)[a] == "not loaded"
    release.set()
    slow.join()
    assert_same(results[0], reduced_engine.segment(reduced_engine.default_model_id, data, PROMPT))


def test_cancelled_before_work_starts(reduced_model, copies, count_builds):
    a, b = copies["a"], copies["b"]
    engine = make_engine(reduced_model, a, b)
    engine.load()
    misses = engine.encoder.cache.stats().misses

    with pytest.raises(Cancelled):  # before the model loads
        engine.segment(b, png(12), PROMPT, Work(cancelled=lambda: True))
    assert count_builds == [a]
    assert states(engine)[b] == "not loaded"

    with pytest.raises(Cancelled):  # before the image is decoded and encoded
        engine.segment(a, png(12), PROMPT, Work(cancelled=lambda: True))
    assert engine.encoder.encoded_images == 0
    assert engine.encoder.cache.stats().misses == misses

    answers = iter([False, True])  # the client leaves during the encode
    with pytest.raises(Cancelled):  # before the prompt decode; the encode ran to its end
        engine.segment(a, png(12), PROMPT, Work(cancelled=lambda: next(answers)))
    assert engine.encoder.encoded_images == 1
    assert engine.encoder.cache.stats().entries == 1

    assert engine.segment(a, png(12), PROMPT, Work(cancelled=lambda: False)).masks.shape[0] == 3


def test_requests_before_load_ends_are_told_to_retry(reduced_model, copies):
    engine = make_engine(reduced_model, copies["a"])
    with pytest.raises(ServiceError) as info:
        engine.segment(copies["a"], png(13), PROMPT)
    assert status_of(info.value) == 503
    assert headers_of(info.value) == {"Retry-After": "5"}


def test_image_size_reads_the_header(reduced_engine):
    assert reduced_engine.image_size(png(14, size=(120, 40))) == (120, 40)
    with pytest.raises(ServiceError) as info:
        reduced_engine.image_size(b"not an image")
    assert status_of(info.value) == 400


# -- the registry on its own (no torch: instant) ---------------------------------------------


class Weights:
    def __init__(self, name: str, nbytes: int) -> None:
        self.name, self.nbytes = name, nbytes


def fake_registry(sizes: dict[str, int], max_bytes: int, log: list[str]) -> ModelRegistry[Weights]:
    def load(model_id: str) -> Weights:
        log.append(f"load {model_id}")
        return Weights(model_id, sizes[model_id])

    return ModelRegistry(
        sizes,
        load,
        size_of=lambda w: w.nbytes,
        max_bytes=max_bytes,
        on_evict=lambda model_id, nbytes: log.append(f"evict {model_id}"),
    )


def test_use_refreshes_recency_and_a_model_over_budget_is_served_alone():
    log: list[str] = []
    registry = fake_registry({"a": 4, "b": 4, "c": 4, "big": 100}, max_bytes=8, log=log)
    registry.get("a")
    registry.get("b")
    registry.get("a")  # b is now the least recent
    registry.get("c")
    assert log == ["load a", "load b", "load c", "evict b"]
    held = registry.get("a")
    registry.get("big")
    assert log[-3:] == ["load big", "evict c", "evict a"]  # its size was not known before
    assert registry.bytes == 100
    assert held.name == "a"  # the caller's reference is untouched


def test_room_is_made_before_a_reload_of_known_size():
    log: list[str] = []
    registry = fake_registry({"a": 6, "b": 6}, max_bytes=8, log=log)
    registry.get("a")
    registry.get("b")
    assert log == ["load a", "load b", "evict a"]
    registry.get("a")  # its size is known: b goes first, so a and b never overlap
    assert log[-2:] == ["evict b", "load a"]


def test_before_load_runs_only_for_the_request_that_loads():
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def load(model_id: str) -> Weights:
        started.set()
        assert release.wait(10)
        return Weights(model_id, 1)

    registry: ModelRegistry[Weights] = ModelRegistry(
        ["a"], load, size_of=lambda w: w.nbytes, max_bytes=10
    )
    owner = threading.Thread(target=registry.get, args=("a", lambda: calls.append("owner")))
    owner.start()
    assert started.wait(10)
    waiter_result: list[Weights] = []
    waiter = threading.Thread(
        target=lambda: waiter_result.append(registry.get("a", lambda: calls.append("waiter")))
    )
    waiter.start()
    time.sleep(0.1)
    assert registry.snapshot()["a"]["state"] == "loading"
    release.set()
    owner.join()
    waiter.join()
    assert calls == ["owner"]
    assert waiter_result[0].name == "a"
    registry.get("a", lambda: calls.append("loaded"))
    assert calls == ["owner"]


def test_a_failed_load_reaches_its_waiters_and_is_not_retried_at_once():
    attempts: list[str] = []
    release = threading.Event()

    def load(model_id: str) -> Weights:
        attempts.append(model_id)
        assert release.wait(10)
        raise ModelLoadError("weights unreadable")

    registry: ModelRegistry[Weights] = ModelRegistry(
        ["a"], load, size_of=lambda w: w.nbytes, max_bytes=10
    )
    errors: list[ServiceError] = []

    def request() -> None:
        try:
            registry.get("a")
        except ServiceError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    release.set()
    for thread in threads:
        thread.join()
    assert attempts == ["a"]
    assert [e.message for e in errors] == ["a is unavailable: weights unreadable"] * 3
    request()
    assert attempts == ["a"]
    assert registry.unavailable() == {"a": "weights unreadable"}
    assert registry.all_failed()

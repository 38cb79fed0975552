"""`GET /hardware/info` and `/hardware/stats` answer as Livepeer's runner does.

The expected schemas are copied from livepeer/ai-runner's runner/openapi.yaml
(components `HardwareInformation`, `HardwareStats`, `GPUComputeInfo`,
`GPUUtilizationInfo`; commit 50a742c), which go-livepeer generates its client
from (ai/worker/runner.gen.go: `GpuInfo map[string]GPUComputeInfo`). In that
file neither route has `security`: the runner serves them without a token.
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from sam2_server import PIPELINE
from sam2_server.api import create_app
from sam2_server.config import Settings
from tests.api.test_lifecycle import SlowLoader

_BASE = {
    "id": {"type": "string", "title": "Id"},
    "name": {"type": "string", "title": "Name"},
    "memory_total": {"type": "integer", "title": "Memory Total"},
    "memory_free": {"type": "integer", "title": "Memory Free"},
}
LIVEPEER_SCHEMAS: dict[str, dict[str, Any]] = {
    "GPUComputeInfo": {
        "properties": {
            **_BASE,
            "major": {"type": "integer", "title": "Major"},
            "minor": {"type": "integer", "title": "Minor"},
        },
        "type": "object",
        "required": ["id", "name", "memory_total", "memory_free", "major", "minor"],
        "title": "GPUComputeInfo",
        "description": "Model for detailed GPU compute information.",
    },
    "GPUUtilizationInfo": {
        "properties": {
            **_BASE,
            "utilization_compute": {"type": "integer", "title": "Utilization Compute"},
            "utilization_memory": {"type": "integer", "title": "Utilization Memory"},
        },
        "type": "object",
        "required": [
            "id",
            "name",
            "memory_total",
            "memory_free",
            "utilization_compute",
            "utilization_memory",
        ],
        "title": "GPUUtilizationInfo",
        "description": "Model for GPU utilization statistics.",
    },
    "HardwareInformation": {
        "properties": {
            "pipeline": {"type": "string", "title": "Pipeline"},
            "model_id": {"type": "string", "title": "Model Id"},
            "gpu_info": {
                "additionalProperties": {"$ref": "#/components/schemas/GPUComputeInfo"},
                "type": "object",
                "title": "Gpu Info",
            },
        },
        "type": "object",
        "required": ["pipeline", "model_id", "gpu_info"],
        "title": "HardwareInformation",
        "description": "Response model for GPU information.",
    },
    "HardwareStats": {
        "properties": {
            "pipeline": {"type": "string", "title": "Pipeline"},
            "model_id": {"type": "string", "title": "Model Id"},
            "gpu_stats": {
                "additionalProperties": {"$ref": "#/components/schemas/GPUUtilizationInfo"},
                "type": "object",
                "title": "Gpu Stats",
            },
        },
        "type": "object",
        "required": ["pipeline", "model_id", "gpu_stats"],
        "title": "HardwareStats",
        "description": "Response model for real-time GPU statistics.",
    },
}
ROUTES = {"/hardware/info": "HardwareInformation", "/hardware/stats": "HardwareStats"}

GPU = {
    "id": "GPU-5b2c1e6a-0000-4000-8000-000000000000",
    "name": "NVIDIA H100 80GB HBM3",
    "memory_total": 85_520_809_984,
    "memory_free": 84_000_000_000,
    "major": 9,
    "minor": 0,
    "utilization_compute": 37,
    "utilization_memory": 12,
}


def assert_livepeer_shape(name: str, answer: dict[str, Any]) -> None:
    """Validate `answer` against Livepeer's component `name` (refs resolved locally)."""
    schema = {**LIVEPEER_SCHEMAS[name], "components": {"schemas": LIVEPEER_SCHEMAS}}
    jsonschema_rs.Draft202012Validator(schema).validate(answer)


class GpuLoader(SlowLoader):
    """The lifecycle stand-in, loaded, on one GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.status = "OK"

    def hardware(self) -> dict[int, dict[str, Any]]:
        return {0: dict(GPU)}


@pytest.mark.parametrize("path", ROUTES)
def test_cpu_answer_matches_livepeer_with_no_gpus(client, reduced_engine, path):
    response = client.get(path)
    assert response.status_code == 200
    answer = response.json()
    assert_livepeer_shape(ROUTES[path], answer)
    assert answer["pipeline"] == PIPELINE == "segment-anything-2"
    assert answer["model_id"] == reduced_engine.default_model_id
    # As the runner without NVML devices: an empty map, not null or absent.
    assert answer["gpu_info" if path.endswith("info") else "gpu_stats"] == {}
    assert client.get(path + "/").json() == answer


def test_engine_on_cpu_reports_no_gpu(reduced_engine):
    assert reduced_engine.hardware() == {}


def test_gpu_entries_take_each_shape_fields():
    with TestClient(create_app(Settings(), GpuLoader(), load=False)) as client:
        info = client.get("/hardware/info").json()
        stats = client.get("/hardware/stats").json()
    assert_livepeer_shape("HardwareInformation", info)
    assert_livepeer_shape("HardwareStats", stats)
    compute = ("id", "name", "memory_total", "memory_free", "major", "minor")
    usage = ("id", "name", "memory_total", "memory_free", "utilization_compute")
    assert info["gpu_info"] == {"0": {k: GPU[k] for k in compute}}
    assert stats["gpu_stats"] == {"0": {k: GPU[k] for k in (*usage, "utilization_memory")}}


@pytest.mark.parametrize("path", ROUTES)
def test_no_token_needed_as_in_livepeer(path):
    """The runner's hardware routes have no bearer dependency; go-livepeer sends one anyway."""
    app = create_app(Settings(auth_token="secret"), GpuLoader(), load=False)
    with TestClient(app) as client:
        assert client.get(path).status_code == 200
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 200
        assert client.get("/stats").status_code == 401  # ours stay behind the token


def test_openapi_names_and_shapes_are_livepeers():
    spec = create_app(Settings(), GpuLoader(), load=False).openapi()
    for path, name in ROUTES.items():
        operation = spec["paths"][path]["get"]
        assert operation["operationId"] == path.replace("/hardware/", "hardware_")
        assert "security" not in operation
        schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{name}"}
    for name, expected in LIVEPEER_SCHEMAS.items():
        ours = spec["components"]["schemas"][name]
        for prop in ours["properties"].values():
            prop.pop("propertyNames", None)  # pydantic's note that the keys are ints
        assert ours == expected, name

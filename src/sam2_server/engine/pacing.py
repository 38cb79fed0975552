"""How long automatic masks take on this server, learned from its own runs, and the
time budget (AUTOMATIC_TIME_BUDGET) that keeps one request from holding the machine.

A generation's work is its grid points: each is a forward through the mask
decoder, then the upsampling, scoring and run-length encoding of its
candidates at the image's size; crops add an encode each. Measured on a
2-core AVX2 CPU (fp32, SAM2's decoder): about 110 ms per point plus 27 ms per
point per megapixel of the image, so a point costs `1 + PIXEL_WEIGHT * MP`
units, and each model's seconds per unit are learned from every batch it
runs (the rate differs a hundredfold between a CPU and a GPU, so nothing is
assumed before the first batch).

A request is refused before any work when the model's learned rate says it
would exceed the budget; on a model that has not run automatic masks yet,
after its first batch, when the rate is known. Whatever the estimate said, a
generation still running at twice the budget is stopped.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sam2.utils.amg import build_all_layer_point_grids, generate_crop_boxes

from sam2_server.domain import AutomaticParams
from sam2_server.errors import ErrorKind, ServiceError

__all__ = ["Pacer", "Plan", "plan_of"]

PIXEL_WEIGHT = 0.25  # a point's pixel work per megapixel, in decoder passes (see above)
_SMOOTHING = 0.3  # weight of the newest batch in a model's learned rate
HARD_STOP_FACTOR = 2.0  # a generation past this many budgets is stopped


@dataclass(frozen=True)
class Plan:
    """The work one request asks for: its points, their units, its crop encodes."""

    points: int
    units: float
    crop_encodes: int


def plan_of(params: AutomaticParams, orig_hw: tuple[int, int]) -> Plan:
    """The library's own crops and point grids for `params` on an image of `orig_hw`."""
    crop_boxes, layers = generate_crop_boxes(
        orig_hw, params.crop_n_layers, params.crop_overlap_ratio
    )
    grids = build_all_layer_point_grids(
        params.points_per_side, params.crop_n_layers, params.crop_n_points_downscale_factor
    )
    points = sum(len(grids[layer]) for layer in layers)
    return Plan(points, points * point_units(orig_hw), crop_encodes=len(crop_boxes) - 1)


def point_units(orig_hw: tuple[int, int]) -> float:
    """One grid point's work on an image of `orig_hw`, in decoder passes."""
    return 1.0 + PIXEL_WEIGHT * orig_hw[0] * orig_hw[1] / 1e6


class Pacer:
    """Per model: seconds per unit and per crop encode, as measured here."""

    def __init__(self, budget_s: float | None) -> None:
        self.budget_s = budget_s  # None: no budget
        self._unit_s: dict[str, float] = {}
        self._encode_s: dict[str, float] = {}
        self._lock = threading.Lock()

    def estimate(self, model_id: str, plan: Plan) -> float | None:
        """Seconds `plan` would take on `model_id`; None before the model's first batch."""
        with self._lock:
            unit_s = self._unit_s.get(model_id)
            encode_s = self._encode_s.get(model_id, 0.0)
        if unit_s is None:
            return None
        return plan.units * unit_s + plan.crop_encodes * encode_s

    def check(self, model_id: str, plan: Plan) -> None:
        """Refuse `plan` when its estimate on `model_id` is over the budget."""
        if self.budget_s is None:
            return
        estimate = self.estimate(model_id, plan)
        if estimate is not None and estimate > self.budget_s:
            raise ServiceError(
                ErrorKind.BAD_INPUT,
                f"These parameters would take about {estimate:.0f} s on this server "
                f"({plan.points} grid points{_crops(plan)}, at the speed measured here), over "
                f"its budget of {self.budget_s:g} s per request (AUTOMATIC_TIME_BUDGET): lower "
                "points_per_side or crop_n_layers, or raise crop_n_points_downscale_factor.",
            )

    def observe_batch(self, model_id: str, units: float, seconds: float) -> None:
        """One batch's forward and postprocessing took `seconds` for `units` of work."""
        self._learn(self._unit_s, model_id, seconds / units)

    def observe_encode(self, model_id: str, seconds: float) -> None:
        """One crop's encode took `seconds`."""
        self._learn(self._encode_s, model_id, seconds)

    def _learn(self, rates: dict[str, float], model_id: str, value: float) -> None:
        with self._lock:
            old = rates.get(model_id)
            rates[model_id] = value if old is None else old + _SMOOTHING * (value - old)


class Deadline:
    """One generation's clock, from its first batch: stops it past HARD_STOP_FACTOR budgets."""

    def __init__(self, budget_s: float | None) -> None:
        self.budget_s = budget_s
        self.started: float | None = None

    def check(self) -> None:
        """Asked before each batch (and crop encode)."""
        now = time.perf_counter()
        if self.started is None:
            self.started = now
        if self.budget_s is None:
            return
        elapsed = now - self.started
        if elapsed > HARD_STOP_FACTOR * self.budget_s:
            raise ServiceError(
                ErrorKind.BAD_INPUT,
                f"Automatic masks stopped after {elapsed:.0f} s, over twice this server's "
                f"budget of {self.budget_s:g} s per request (AUTOMATIC_TIME_BUDGET); the "
                "server is slower than measured now: lower points_per_side or try later.",
            )


def _crops(plan: Plan) -> str:
    return f" and {plan.crop_encodes} crop encodes" if plan.crop_encodes else ""

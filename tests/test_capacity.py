"""bench/capacity.py: the routing simulation behaves as its model says."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from capacity import Config, simulate

SMALL = {
    "encode": 0.5,
    "decode": 0.05,
    "annotators": 20,
    "cache": 64,  # above the 20 images in use: no evictions
    "duration": 120.0,
    "warmup": 20.0,
}


def test_deterministic_for_a_seed() -> None:
    a = simulate(Config(replicas=4, policy="random", seed=3, **SMALL))
    b = simulate(Config(replicas=4, policy="random", seed=3, **SMALL))
    c = simulate(Config(replicas=4, policy="random", seed=4, **SMALL))
    assert (a.requests, a.encodes, a.images) == (b.requests, b.encodes, b.images)
    assert np.array_equal(a.follow, b.follow)
    assert np.array_equal(a.first, b.first)
    assert not np.array_equal(a.follow, c.follow)


def test_one_replica_routes_alike() -> None:
    results = [simulate(Config(replicas=1, policy=p, **SMALL)) for p in ("random", "mux", "hash")]
    assert len({(r.requests, r.encodes, r.images) for r in results}) == 1
    assert results[0].encodes_per_image == 1.0  # the cache holds every image in use


def test_affinity_encodes_once_random_more() -> None:
    mux = simulate(Config(replicas=6, policy="mux", **SMALL))
    rnd = simulate(Config(replicas=6, policy="random", **SMALL))
    assert mux.images > 100
    assert rnd.images > 100
    assert mux.encodes_per_image <= 1.05
    assert rnd.encodes_per_image > 2.0
    assert mux.hit_rate > rnd.hit_rate

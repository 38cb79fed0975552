"""Capacity model: what routing clicks by image (Ray Serve multiplexing) is worth.

A discrete-event simulation of annotators clicking on images served by R
replicas, comparing three routers:

  random  Ray Serve's default router without a model id
          (PowerOfTwoChoicesRequestRouter): two random replicas, the one with
          fewer ongoing requests that still accepts (< max_ongoing_requests).
  mux     the same router with the image's SHA-256 as multiplexed_model_id
          (MultiplexMixin.apply_multiplex_routing), see docs/scaling.md:
          1. power of two among the replicas that hold the image;
          2. if none holds it, or both picks refuse (full), power of two among
             the replicas holding the fewest ids (the fewest cached embeddings);
          3. then among all replicas; if every pick refuses, the request waits
             at the router and is retried when a replica finishes one.
  hash    strict hashing (image -> replica index), never spills: what a custom
          hash router would do, for reference.

Workload (every item is an assumption, all are CLI options):
  - closed loop: --annotators N people work all the time; each session is
    --images images (20) one after another, then a new session starts;
  - per image a geometric number of clicks (mean --clicks, 5, at least 1);
  - think time before each click: exponential, mean --think (3 s), counted
    from the previous answer; before the first click of an image:
    exponential, mean --image-think (5 s); sessions start spread over the
    first 30 s;
  - every image is new (annotators label distinct images), so its first
    click always needs an encode somewhere;
  - --arrival-rate X instead gives an open loop: users arrive as a Poisson
    process (X per second), do one session and leave.

Service (assumptions):
  - a request on a replica whose LRU embedding cache (--cache entries, the
    `max_num_models_per_replica` of the multiplexed loader) lacks the image
    costs encode E + decode D, otherwise D; the image is then cached (LRU);
  - each replica runs one request at a time, FIFO (one encode already uses
    all of a replica's cores or its GPU); it accepts at most --max-ongoing (Ray's default
    max_ongoing_requests, 5) requests including the running one;
  - the router sees a replica's cache exactly (Ray pushes model ids at most
    every 0.1 s: PUSH_MULTIPLEXED_MODEL_IDS_INTERVAL_S) and already counts an
    image queued for encoding on a replica as held by it; the 1-2 s
    RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S and the router's
    backoff are not modelled (a refusal falls through at once, as Ray does
    after its first try on the holders);
  - no network, batching, autoscaling or replica failures; a request's
    latency is from sending to its answer (router wait + queue + service).

Presets (E, D in seconds; each also sets the p99 targets, N and C below):
  cpu-tiny            2.55, 0.16  measured: bench/README.md, 2-core x86, hiera-tiny
                      1024x768: cold request 2.718 s median, click on a cached image
                      0.163 s (README "The native API": 98-105 ms in the native
                      format), encoder alone 2.57 s; E = cold - click.
                      Targets 1 s and 5 s, N = 100, C = 16.
  h100-large          0.090, 0.008  ASSUMED from the published sam2.1-large single
                      prompt ~98 ms end to end (eager) on an H100, with a decode of
                      ~8 ms (assumption, not measured here): E = 98 - 8 ms.
                      Target 0.2 s, N = 1000, C = 256 (~16 MB per fp32 embedding
                      with its high-res features: ~4 GB).
  h100-large-compiled 0.015, 0.005  ASSUMED from the published ~20 ms compiled end
                      to end, decode ~5 ms (assumption). Target 0.1 s, N = 1000,
                      C = 256.

"Replicas per 1,000 annotators" is the smallest R whose follow-up clicks (not
the first click on an image, which must wait for an encode) have p99 <= the
target (--target; preset default), found by bisection on R for N simulated
annotators, scaled to 1,000 (N is a preset default too; a larger pool queues
a little better, so the scaling is slightly pessimistic for big N). The
other columns show every policy at one R (the mux's), so that encoder runs,
hit rate, latency and utilisation compare at equal cost. Simulated: 300 s
measured after 60 s of warm-up; seeded, deterministic.

    .venv/bin/python bench/capacity.py                   # all presets, ~30 s on 2 cores
    .venv/bin/python bench/capacity.py --preset cpu-tiny --replicas 20
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import math
import random
import sys
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

POLICIES = ("random", "mux", "hash")


@dataclass(frozen=True)
class Preset:
    encode: float  # seconds per image encode on one replica
    decode: float  # seconds per prompt decode on one replica
    targets: tuple[float, ...]  # p99s of follow-up clicks to meet, seconds
    annotators: int  # how many to simulate for the R search
    cache: int  # embeddings per replica (max_num_models_per_replica)


PRESETS = {
    "cpu-tiny": Preset(encode=2.55, decode=0.16, targets=(1.0, 5.0), annotators=100, cache=16),
    "h100-large": Preset(encode=0.090, decode=0.008, targets=(0.2,), annotators=1000, cache=256),
    "h100-large-compiled": Preset(
        encode=0.015, decode=0.005, targets=(0.1,), annotators=1000, cache=256
    ),
}


@dataclass
class Config:
    encode: float
    decode: float
    replicas: int
    policy: str = "mux"
    annotators: int = 100
    arrival_rate: float | None = None  # users/s; open loop instead of annotators
    images: int = 20
    clicks: float = 5.0
    think: float = 3.0
    image_think: float = 5.0
    cache: int = 16
    max_ongoing: int = 5
    duration: float = 300.0  # measured seconds, after the warm-up
    warmup: float = 60.0
    seed: int = 0


@dataclass
class Result:
    requests: int
    images: int
    encodes: int
    first: np.ndarray = field(repr=False)  # latencies of first clicks on an image
    follow: np.ndarray = field(repr=False)  # latencies of the other clicks
    utilisation: float = 0.0
    follow_misses: int = 0  # follow-up clicks that needed an encode

    @property
    def encodes_per_image(self) -> float:
        return self.encodes / max(self.images, 1)

    @property
    def hit_rate(self) -> float:
        return 1.0 - self.encodes / max(self.requests, 1)

    def p(self, which: str, q: float) -> float:
        values = self.first if which == "first" else self.follow
        return float(np.percentile(values, q)) if len(values) else math.nan


class Replica:
    """One FIFO server; its future is computed when a request is queued."""

    __slots__ = ("busy", "cache", "finishes", "free_at")

    def __init__(self) -> None:
        self.free_at = 0.0
        self.finishes: deque[float] = deque()  # finish times of queued requests
        self.cache: OrderedDict[int, None] = OrderedDict()
        self.busy = 0.0

    def ongoing(self, now: float) -> int:
        finishes = self.finishes
        while finishes and finishes[0] <= now:
            finishes.popleft()
        return len(finishes)


def simulate(cfg: Config) -> Result:
    """Run one scenario; deterministic for cfg.seed."""
    rng = random.Random(cfg.seed)  # workload
    route_rng = random.Random(cfg.seed + 1)  # router choices, apart from the workload
    replicas = [Replica() for _ in range(cfg.replicas)]
    end = cfg.warmup + cfg.duration
    p_stop = 1.0 / cfg.clicks  # geometric number of clicks, mean cfg.clicks
    holders: dict[int, set[int]] = {}  # image -> replicas whose cache holds it
    counts = [0] * cfg.replicas  # cached entries per replica

    # events: (time, seq, user state); user state = [image, clicks left, images left, first]
    events: list = []
    seq = 0
    next_image = 0

    def new_image(state: list) -> None:
        nonlocal next_image
        state[0] = next_image
        next_image += 1
        n = 1
        while rng.random() >= p_stop:
            n += 1
        state[1] = n
        state[2] -= 1
        state[3] = True

    def start_user(at: float) -> None:
        nonlocal seq
        state = [0, 0, cfg.images, True]
        new_image(state)
        heapq.heappush(events, (at + rng.expovariate(1.0 / cfg.image_think), seq, state))
        seq += 1

    if cfg.arrival_rate:
        t = rng.expovariate(cfg.arrival_rate)
        arrivals = []
        while t < end:
            arrivals.append(t)
            t += rng.expovariate(cfg.arrival_rate)
        for t in arrivals:
            start_user(t)
    else:
        for _ in range(cfg.annotators):
            start_user(rng.uniform(0.0, 30.0))

    def pick_two(candidates: list[int], now: float) -> int | None:
        """Power of two choices: the less busy of two random picks that accepts."""
        chosen = candidates if len(candidates) == 1 else route_rng.sample(candidates, 2)
        best, best_q = None, cfg.max_ongoing
        for r in chosen:
            q = replicas[r].ongoing(now)
            if q < best_q:
                best, best_q = r, q
        return best

    all_ids = list(range(cfg.replicas))
    fewest_ids: list[int] = []  # replicas holding the fewest images; emptied when counts change

    def route(image: int, now: float) -> int | None:
        if cfg.policy == "hash":
            return (
                int.from_bytes(hashlib.sha256(image.to_bytes(8, "little")).digest()[:8], "little")
                % cfg.replicas
            )
        if cfg.policy == "mux":
            held = holders.get(image)
            if held:
                r = pick_two(sorted(held), now)
                if r is not None:
                    return r
            if not fewest_ids:
                least = min(counts)
                fewest_ids.extend(i for i in all_ids if counts[i] == least)
            r = pick_two(fewest_ids, now)
            if r is not None:
                return r
        return pick_two(all_ids, now)

    first_lat: list[float] = []
    follow_lat: list[float] = []
    requests = encodes = follow_misses = 0
    measured_images: set[int] = set()
    image_encodes = 0
    waiting: deque = deque()  # (sent, state) refused everywhere, retried in FIFO order
    now = 0.0

    def serve(r: int, image: int, sent: float, now: float, state: list) -> float:
        nonlocal requests, encodes, image_encodes, seq, follow_misses
        rep = replicas[r]
        start = max(now, rep.free_at)
        cache = rep.cache
        if image in cache:
            cache.move_to_end(image)
            service = cfg.decode
            hit = True
        else:
            service = cfg.encode + cfg.decode
            hit = False
            cache[image] = None
            holders.setdefault(image, set()).add(r)
            if len(cache) > cfg.cache:
                old, _ = cache.popitem(last=False)
                held = holders[old]
                held.discard(r)
                if not held:
                    del holders[old]
            else:
                counts[r] += 1
                fewest_ids.clear()
        finish = start + service
        rep.free_at = finish
        rep.finishes.append(finish)
        if cfg.warmup <= sent < end:
            rep.busy += service
            requests += 1
            (first_lat if state[3] else follow_lat).append(finish - sent)
            if state[3]:
                measured_images.add(image)
            if not hit:
                encodes += 1
                if not state[3]:
                    follow_misses += 1
                if image in measured_images:
                    image_encodes += 1
        # the user's next click
        state[3] = False
        state[1] -= 1
        if state[1] == 0:
            if state[2] == 0:
                if cfg.arrival_rate:
                    return finish
                state[2] = cfg.images  # a new session
            new_image(state)
            nxt = finish + rng.expovariate(1.0 / cfg.image_think)
        else:
            nxt = finish + rng.expovariate(1.0 / cfg.think)
        if nxt < end:
            heapq.heappush(events, (nxt, seq, state))
            seq += 1
        return finish

    while events or waiting:
        if waiting:
            # retry the waiting requests once a replica has finished one
            for rep in replicas:
                rep.ongoing(now)  # drop what finished by now
            soonest = min((rep.finishes[0] for rep in replicas if rep.finishes), default=now)
            if events and events[0][0] < soonest:
                now, _, state = heapq.heappop(events)
                waiting.append((now, state))
            else:
                now = soonest
            while waiting:
                sent, state = waiting[0]
                r = route(state[0], now)
                if r is None:
                    break
                waiting.popleft()
                serve(r, state[0], sent, now, state)
            continue
        now, _, state = heapq.heappop(events)
        r = route(state[0], now)
        if r is None:
            waiting.append((now, state))
            continue
        serve(r, state[0], now, now, state)

    busy = sum(rep.busy for rep in replicas)
    return Result(
        requests=requests,
        images=len(measured_images),
        encodes=image_encodes,
        first=np.asarray(first_lat),
        follow=np.asarray(follow_lat),
        utilisation=busy / (cfg.replicas * cfg.duration),
        follow_misses=follow_misses,
    )


def meets(result: Result, target: float) -> bool:
    return len(result.follow) > 0 and result.p("follow", 99) <= target


def replicas_needed(cfg: Config, target: float) -> tuple[int | None, Result]:
    """Smallest R whose follow-up clicks meet the p99 target (bisection)."""
    # A lower bound: the work with one encode per image must fit in R replicas.
    cycle = cfg.clicks * cfg.think + cfg.image_think
    per_user = (cfg.encode + cfg.clicks * cfg.decode) / cycle
    users = cfg.annotators if not cfg.arrival_rate else cfg.arrival_rate * cfg.images * cycle
    lo = max(0, math.floor(users * per_user * 0.9))
    hi = max(lo + 1, 2 * lo)
    results: dict[int, Result] = {}

    def run(r: int) -> Result:
        if r not in results:
            results[r] = simulate(Config(**{**cfg.__dict__, "replicas": r}))
        return results[r]

    limit = 16 * hi
    while not meets(res := run(hi), target):
        if cfg.encode + cfg.decode > target and res.follow_misses > 0.01 * len(res.follow):
            return None, res  # over 1% of clicks must encode, more so with more replicas
        lo, hi = hi, hi * 2
        if hi > limit:
            return -lo, res  # not met by R = lo (shown as "> lo")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if meets(run(mid), target):
            hi = mid
        else:
            lo = mid
    return hi, run(hi)


def row(label: str, policy: str, needed: str, r: int, res: Result) -> str:
    return (
        f"{label:<29} {policy:<7} {needed:>7} {r:>4} {res.encodes_per_image:>7.2f} "
        f"{100 * res.hit_rate:>5.1f}% {res.p('follow', 50) * 1000:>7.0f} "
        f"{res.p('follow', 99) * 1000:>7.0f} {res.p('first', 99) * 1000:>7.0f} "
        f"{100 * res.utilisation:>5.1f}%"
    )


HEADER = (
    f"{'preset (p99 target)':<29} {'policy':<7} {'R/1000':>7} {'R':>4} {'enc/img':>7} {'hits':>6} "
    f"{'p50':>7} {'p99':>7} {'p99 1st':>7} {'util':>6}"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=[*PRESETS, "all"], default="all")
    parser.add_argument("--encode", type=float, help="seconds per encode (overrides the preset)")
    parser.add_argument("--decode", type=float, help="seconds per decode (overrides the preset)")
    parser.add_argument("--target", type=float, help="p99 of follow-up clicks, seconds")
    parser.add_argument("--policy", choices=[*POLICIES, "all"], default="all")
    parser.add_argument("--replicas", type=int, help="simulate this R instead of searching")
    parser.add_argument("--annotators", type=int, help="concurrent annotators simulated")
    parser.add_argument("--arrival-rate", type=float, help="open loop: users per second")
    parser.add_argument("--images", type=int, default=20, help="images per session")
    parser.add_argument("--clicks", type=float, default=5.0, help="mean clicks per image")
    parser.add_argument(
        "--think", type=float, default=3.0, help="mean think time between clicks, s"
    )
    parser.add_argument(
        "--image-think", type=float, default=5.0, help="mean time before an image's first click, s"
    )
    parser.add_argument("--cache", type=int, help="embeddings per replica (LRU; preset default)")
    parser.add_argument("--max-ongoing", type=int, default=5, help="Ray's max_ongoing_requests")
    parser.add_argument("--duration", type=float, default=300.0, help="measured simulated seconds")
    parser.add_argument("--warmup", type=float, default=60.0, help="simulated seconds not measured")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    presets = list(PRESETS) if args.preset == "all" else [args.preset]
    policies = list(POLICIES) if args.policy == "all" else [args.policy]
    began = time.perf_counter()
    print(
        f"annotators: {args.clicks:g} clicks/image (geometric), think {args.think:g} s, "
        f"{args.image_think:g} s before an image, {args.images} images/session; "
        f"max_ongoing {args.max_ongoing}; {args.duration:g} s measured after {args.warmup:g} s, "
        f"seed {args.seed}"
    )
    print(
        "R/1000: replicas per 1,000 concurrent annotators for p99 of follow-up clicks <= target\n"
        "(never: no R does it). Other columns: every policy at one R (the mux's R/1000),\n"
        "latencies in ms, p50/p99 of follow-up clicks, p99 of an image's first click."
    )
    print(HEADER)
    for name in presets:
        preset = PRESETS[name]
        targets = [args.target] if args.target is not None else list(preset.targets)
        base = Config(
            encode=args.encode if args.encode is not None else preset.encode,
            decode=args.decode if args.decode is not None else preset.decode,
            replicas=args.replicas or 1,
            annotators=args.annotators or preset.annotators,
            arrival_rate=args.arrival_rate,
            images=args.images,
            clicks=args.clicks,
            think=args.think,
            image_think=args.image_think,
            cache=args.cache or preset.cache,
            max_ongoing=args.max_ongoing,
            duration=args.duration,
            warmup=args.warmup,
            seed=args.seed,
        )
        for target in targets:
            label = f"{name} ({1000 * target:g} ms)"
            needed: dict[str, int | None] = {}
            if not args.replicas:
                for policy in policies:
                    cfg = Config(**{**base.__dict__, "policy": policy})
                    needed[policy], _ = replicas_needed(cfg, target)
            # compare at one R: the one given, else what the first policy that meets it needs
            common = args.replicas or next(
                (needed[p] for p in ("mux", *policies) if (needed.get(p) or 0) > 0), base.replicas
            )
            for policy in policies:
                res = simulate(Config(**{**base.__dict__, "policy": policy, "replicas": common}))
                if args.replicas or args.arrival_rate:
                    shown = "-"
                elif needed[policy] is None:
                    shown = "never"
                elif needed[policy] < 0:
                    shown = f">{1000 * -needed[policy] / base.annotators:.0f}"
                else:
                    shown = f"{1000 * needed[policy] / base.annotators:.0f}"
                print(row(label, policy, shown, common, res))
    print(f"({time.perf_counter() - began:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

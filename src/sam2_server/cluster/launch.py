"""`sam2-server serve --replicas N`: the same API from N engine replicas on Ray Serve.

The application is three deployments:

- `Ingress` (one, no CPU reserved): the front door, cluster/ingress.py;
- `Engine` (N): the server's app around its own Engine, cluster/replica.py;
- `Directory` (one, no CPU reserved): uploads and replica reports,
  cluster/directory.py.

Ray Serve's HTTP proxy listens on HOST:PORT and hands every request to the
ingress. Ray restarts a replica that dies; the others keep answering.

A Ray cluster this process starts (no `--ray-address`) listens on loopback
only, with no dashboard unless asked for: see cluster/loopback.py. `--host`
names where the API listens, not where Ray does.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from types import FrameType

from sam2_server.config import Settings

logger = logging.getLogger("sam2_server")

APP_NAME = "sam2-server"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class ClusterOptions:
    replicas: int
    ray_address: str | None = None  # None: start a local Ray cluster
    replica_cpus: float = 1.0  # Ray CPUs reserved per engine replica
    replica_gpus: float = 0.0  # GPUs per engine replica (1 on a GPU cluster)
    dashboard: bool = False  # Ray's dashboard, when this process starts Ray


def build_application(settings: Settings, options: ClusterOptions):  # noqa: ANN201 (Ray's type)
    """The bound Serve application; importing it needs Ray, as `--replicas` does."""
    from ray import serve
    from ray.serve.schema import LoggingConfig

    from sam2_server.cluster.directory import Directory
    from sam2_server.cluster.ingress import Ingress
    from sam2_server.cluster.replica import EngineReplica

    # Serve logs every call; the ingress's lines are the access log, the rest is noise
    # (the replicas report twice a second).
    quiet = LoggingConfig(log_level=settings.log_level.upper(), enable_access_log=False)
    directory = serve.deployment(
        Directory,
        name="Directory",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        logging_config=quiet,
    ).bind(settings.cluster_upload_bytes)
    engine = serve.deployment(
        EngineReplica,
        name="Engine",
        num_replicas=options.replicas,
        max_ongoing_requests=settings.cluster_max_ongoing_requests,
        ray_actor_options={"num_cpus": options.replica_cpus, "num_gpus": options.replica_gpus},
        # Loading a model and warming up can take a while on a CPU.
        health_check_timeout_s=60,
        logging_config=quiet,
    ).bind(settings, directory)
    ingress = serve.deployment(
        serve.ingress()(Ingress),
        name="Ingress",
        num_replicas=1,
        # Streams (a propagation, a large answer) go through it: not Serve's 5.
        max_ongoing_requests=1000,
        ray_actor_options={"num_cpus": 0},
        logging_config=LoggingConfig(log_level=settings.log_level.upper()),
    ).bind(settings, engine, directory)
    return ingress


def start(settings: Settings, options: ClusterOptions) -> None:
    """Join or start Ray, start Serve's proxy on HOST:PORT and deploy; returns once running."""
    handlers = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    if options.ray_address:
        import ray

        ray.init(address=options.ray_address)
    else:
        _start_local_ray(options)
    # ray.init installs handlers that abort the process (exit -6) on SIGTERM; the
    # caller's (serve_cluster: stop cleanly) must hold during the deploy too, which
    # takes a while on a CPU.
    if threading.current_thread() is threading.main_thread():
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
    from ray import serve

    # The proxy is the API: on HOST:PORT like a single server (on every node of a
    # cluster joined with --ray-address). No gRPC proxy: it starts only with gRPC
    # servicers, which this application has none of.
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_application(settings, options), name=APP_NAME, route_prefix="/")


def _start_local_ray(options: ClusterOptions) -> None:
    """Start a one-machine Ray whose services all listen on 127.0.0.1.

    Nothing outside this machine has a reason to reach them, and whoever does can
    run code here. The node's IP is what moves Ray's listeners to loopback (set
    before Ray is imported; cluster/loopback.py has the details); the dashboard
    runs only when asked for, and then on loopback too.
    """
    from sam2_server.cluster import loopback

    loopback.use_loopback_node_ip()
    import ray

    ray.init(include_dashboard=options.dashboard, dashboard_host=loopback.LOOPBACK)
    try:
        loopback.check_loopback_node()
    except RuntimeError:
        ray.shutdown()
        raise


def stop(options: ClusterOptions) -> None:
    """Take the application down; a Ray cluster this process started goes with it."""
    import ray
    from ray import serve

    if options.ray_address:
        serve.delete(APP_NAME)
    else:
        serve.shutdown()
    ray.shutdown()


def serve_cluster(settings: Settings, options: ClusterOptions) -> int:
    """Run until SIGTERM/SIGINT (`sam2-server serve --replicas N`)."""
    stopping = threading.Event()

    def on_signal(sig: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping the cluster application", sig)
        stopping.set()

    for sig in _STOP_SIGNALS:
        signal.signal(sig, on_signal)
    start(settings, options)  # keeps them over ray.init's
    logger.info(
        "serving on http://%s:%d with %d engine replicas%s",
        settings.host,
        settings.port,
        options.replicas,
        f" on the Ray cluster at {options.ray_address}" if options.ray_address else "",
    )
    stopping.wait()
    stop(options)
    return 0

"""A Ray cluster that `serve --replicas N` starts itself listens on loopback only.

Whoever reaches Ray's ports can run code on the cluster (cloudpickle, jobs,
the dashboard's REST API), and a cluster this process starts is one machine:
nothing outside it needs Ray's services. So all of them listen on 127.0.0.1,
and only Serve's HTTP proxy, which *is* the API, listens on `--host`. A
cluster of several machines is the operator's (`ray start`, then
`--ray-address`); docs/scaling.md says what it exposes.

Ray 2.60 has no single setting for it:

- Ray's C++ gRPC servers (GCS, the raylet's node and object managers, every
  worker's core-worker server) bind 0.0.0.0 unless the node's IP is exactly
  127.0.0.1 (`GrpcServer`'s `listen_to_localhost_only`); the metrics ports of
  the autoscaler monitor and the dashboard head, the dashboard agent and the
  runtime-env agent follow the node's IP as well.
- `ray.init(_node_ip_address="127.0.0.1")` does not give that IP:
  `services.resolve_ip_for_localhost` turns loopback into the machine's
  routable address. `services.get_node_ip_address` answers 127.0.0.1 only when
  `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` is false, its default on macOS and
  Windows, where Ray keeps single-machine clusters on loopback (to spare users
  firewall prompts). `use_loopback_node_ip` sets it to 0 before Ray is
  imported (Ray reads it once, at import); the processes Ray starts inherit it.
  The dashboard is off unless asked for (launch.py).
- Each Serve replica opens an inter-deployment gRPC server on `[::]:0`,
  hard-coded in `ray/serve/_private/replica.py` (`Replica._on_initialized`)
  whatever the node's IP (ray-project/ray#64544: no setting). Serve runs the
  deployment's constructor first, and each of ours calls
  `bind_replica_grpc_to_loopback`, which rebinds it on 127.0.0.1 on a loopback
  node. That server carries only Serve's optional gRPC transport
  (`RAY_SERVE_USE_GRPC_BY_DEFAULT`, off here); its peers would dial the node's
  IP, 127.0.0.1, anyway.

tests/cluster/test_cluster.py checks that no process of the local cluster
listens outside loopback, so a Ray upgrade that moves any of this fails there.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from typing import Any

LOOPBACK = "127.0.0.1"
# Ray's switch (ray_constants.ENABLE_RAY_CLUSTER): false = one machine, on loopback.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_ANY_INTERFACE = "[::]:"


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback (`::ffff:127.0.0.1`: how a
    dual-stack socket reports 127.0.0.1, which `ipaddress` before 3.13 calls
    not loopback)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def use_loopback_node_ip() -> None:
    """Make the Ray node this process starts 127.0.0.1; call before `import ray`."""
    os.environ[SINGLE_MACHINE_ENV] = "0"


def check_loopback_node() -> None:
    """Refuse to go on when the node Ray started is not on loopback.

    Only possible when Ray was imported before `use_loopback_node_ip` (the
    switch is read at import): the CLI imports Ray after it, an embedding
    program might not. Failing is safer than serving Ray on every interface.
    """

    address = _node_ip()
    if not is_loopback(address):
        raise RuntimeError(
            f"the local Ray cluster's node address is {address}, not loopback, so its "
            f"services would listen on every interface: set {SINGLE_MACHINE_ENV}=0 "
            "before Ray is imported, or start Ray yourself and pass --ray-address"
        )


def bind_replica_grpc_to_loopback() -> None:
    """In a Serve replica on a loopback node: its inter-deployment gRPC server on 127.0.0.1.

    Call it in a deployment's constructor (Serve binds that server after it).
    Does nothing outside a Ray worker (unit tests build the classes directly)
    or on a node with a routable IP, where other nodes must reach the server.
    """
    import ray

    if not ray.is_initialized() or not is_loopback(_node_ip()):
        return
    from ray.serve._private import replica as serve_replica

    bind: Callable[[Any, str], int] | None = getattr(serve_replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "loopback_only", False):
        return  # already done in this process, or Ray moved it (the test says so)

    def add_port_on_loopback(server: Any, address: str) -> int:
        if address.startswith(_ANY_INTERFACE):
            address = LOOPBACK + address[len(_ANY_INTERFACE) - 1 :]
        return bind(server, address)

    add_port_on_loopback.loopback_only = True  # type: ignore[attr-defined]
    vars(serve_replica)["add_port_to_grpc_server"] = add_port_on_loopback


def _node_ip() -> str:
    """The IP of the Ray node this process is on (Ray's function is untyped)."""
    import ray

    get: Callable[[], str] = ray.util.get_node_ip_address
    return get()

"""The cluster's shared memory: uploads by image id, and each replica's last report.

One instance (a Ray Serve deployment of one replica, no CPU reserved) that
the ingress and the engine replicas talk to:

- **Uploads.** The native API promises that an `image_id` can be prompted
  until its embedding is evicted. In a cluster the request may reach a
  replica that never saw the image (its holder was busy, or was killed and
  replaced), so the ingress keeps every upload here, bounded in bytes, least
  recently used first out, and a replica without the embedding encodes it
  again from these bytes (`Engine.fetch_upload`) instead of answering 404.
- **Reports.** Every replica sends its `/stats` counters, health and
  Prometheus text about twice a second; `/stats`, `/health` and `/metrics`
  of the cluster are built from the reports younger than `max_age_s`. A
  killed replica stops reporting and drops out; Ray's replacement reports
  under its own id.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from sam2_server.cluster.loopback import bind_replica_grpc_to_loopback


class Directory:
    def __init__(self, upload_bytes: int) -> None:
        bind_replica_grpc_to_loopback()  # before Serve binds it: cluster/loopback.py
        self.upload_bytes = upload_bytes
        self._uploads: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._reports: dict[str, dict[str, Any]] = {}

    # Serve runs these on the replica's event loop, one at a time: no locks needed.

    async def put_upload(self, image_id: str, data: bytes) -> None:
        if len(data) > self.upload_bytes:
            return  # larger than the whole store: the replicas' caches are all it has
        old = self._uploads.pop(image_id, None)
        if old is not None:
            self._bytes -= len(old)
        self._uploads[image_id] = data
        self._bytes += len(data)
        while self._bytes > self.upload_bytes:
            _, evicted = self._uploads.popitem(last=False)
            self._bytes -= len(evicted)

    async def get_upload(self, image_id: str) -> bytes | None:
        data = self._uploads.get(image_id)
        if data is not None:
            self._uploads.move_to_end(image_id)
        return data

    async def report(self, report: dict[str, Any]) -> None:
        self._reports[report["replica"]] = {**report, "received": time.time()}

    async def reports(self, max_age_s: float) -> list[dict[str, Any]]:
        """The replicas heard from within `max_age_s`, oldest first; forgets the silent."""
        now = time.time()
        for replica, report in list(self._reports.items()):
            if now - report["received"] > max(max_age_s, 60.0):
                del self._reports[replica]
        fresh = [r for r in self._reports.values() if now - r["received"] <= max_age_s]
        return sorted(fresh, key=lambda r: r["started"])

    async def upload_stats(self) -> dict[str, int]:
        return {"images": len(self._uploads), "bytes": self._bytes, "max_bytes": self.upload_bytes}

"""Scale-out on Ray Serve: `sam2-server serve --replicas N` (see cluster/launch.py).

Imported only with `--replicas`: a single server never imports Ray.
"""

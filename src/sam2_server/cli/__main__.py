"""`python -m sam2_server.cli ...`: the `sam2-server` command without its script, as the
tests and benchmarks start a server."""

import sys

from sam2_server.cli import main

sys.exit(main())

"""sam2-server: Segment Anything 2 over HTTP, wire-compatible with Livepeer's AI runner."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sam2-server")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

PIPELINE = "segment-anything-2"

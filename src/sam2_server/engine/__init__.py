"""Model loading, image encoding and prompt decoding. Knows torch and SAM2, never HTTP."""

from sam2_server.engine.engine import Embedding, Engine, Status, Timings

__all__ = ["Embedding", "Engine", "Status", "Timings"]

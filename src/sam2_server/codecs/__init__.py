"""Prediction → response bytes. Pure functions over numpy arrays: no torch, no HTTP."""

from sam2_server.codecs.livepeer import (
    encode_array,
    encode_livepeer,
    estimate_livepeer_bytes,
    iter_livepeer,
)

__all__ = ["encode_array", "encode_livepeer", "estimate_livepeer_bytes", "iter_livepeer"]

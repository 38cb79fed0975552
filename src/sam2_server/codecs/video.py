"""Video answers: one frame's masks per object, as JSON or as one NDJSON line.

The same mask encodings as the image routes (`native.py`): COCO RLE, PNG or
polygons, binary, at the clip's original size.
"""

from __future__ import annotations

from typing import Any

import orjson

from sam2_server.codecs.lines import json_line
from sam2_server.codecs.native import encode_mask
from sam2_server.domain import FrameMasks, VideoInfo

_NUMPY = orjson.OPT_SERIALIZE_NUMPY  # polygons' rings are int32 arrays


def frame_fields(frame: FrameMasks, mask_format: str, epsilon: float = 0.0) -> dict[str, Any]:
    """`{"frame_index", "objects": [{"object_id", "mask"}]}`, objects in the session's order.

    `epsilon` simplifies polygons (`mask_format` "polygon") to within that many pixels.
    """
    return {
        "frame_index": frame.frame_index,
        "objects": [
            {"object_id": object_id, "mask": encode_mask(mask, mask_format, epsilon)}
            for object_id, mask in zip(frame.object_ids, frame.masks, strict=True)
        ],
    }


def frame_answer(frame: FrameMasks, mask_format: str, epsilon: float = 0.0) -> bytes:
    return orjson.dumps(frame_fields(frame, mask_format, epsilon), option=_NUMPY)


def frame_line(frame: FrameMasks, mask_format: str, epsilon: float = 0.0) -> bytes:
    """One line of the propagation stream (`application/x-ndjson`)."""
    return json_line(frame_fields(frame, mask_format, epsilon), option=_NUMPY)


def video_fields(info: VideoInfo, *, objects: bool = True) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "video_id": info.video_id,
        "model_id": info.model_id,
        "frames": info.frames,
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
    }
    if objects:
        fields["objects"] = list(info.objects)
    return fields

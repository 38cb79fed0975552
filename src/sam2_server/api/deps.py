"""The dependencies every surface declares: the bearer scheme and the segmenter.

The token itself is checked by `RequestGuard` before the body is read;
`bearer_scheme` only declares the scheme in the OpenAPI schema, as the
reference does.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from sam2_server.api.service import Segmenter

bearer_scheme = HTTPBearer(auto_error=False)


def get_segmenter(request: Request) -> Segmenter:
    segmenter: Segmenter = request.app.state.segmenter
    return segmenter


SegmenterDep = Annotated[Segmenter, Depends(get_segmenter)]

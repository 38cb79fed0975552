"""The baseline: what Livepeer's runner does per request, as a server to measure against.

Per request, on the event loop (as the reference route does): open the upload
with PIL, `set_image`, `predict`, sort by score, and build the three strings
with `str(arr.tolist())`. No cache, no worker thread, no batching. Written for
this benchmark from the reference's documented behaviour; only the timing
matters here.

    python bench/baseline_server.py --checkpoint sam2.1_hiera_tiny.pt --port 8001
"""

from __future__ import annotations

import argparse
import json
from typing import Annotated

import numpy as np
import uvicorn
from fastapi import FastAPI, File, Form, UploadFile
from PIL import Image
from sam2.sam2_image_predictor import SAM2ImagePredictor

from sam2_server.engine.models import build_model, fetch_checkpoint, resolve_spec, select_device


def create_baseline(checkpoint: str, config: str | None) -> FastAPI:
    spec = resolve_spec(checkpoint, config)
    predictor = SAM2ImagePredictor(build_model(spec, fetch_checkpoint(spec), select_device("cpu")))
    app = FastAPI()

    def array(text: str | None) -> np.ndarray | None:
        return np.array(json.loads(text)) if text else None

    @app.post("/segment-anything-2")
    async def segment(
        image: Annotated[UploadFile, File()],
        point_coords: Annotated[str | None, Form()] = None,
        point_labels: Annotated[str | None, Form()] = None,
        box: Annotated[str | None, Form()] = None,
        mask_input: Annotated[str | None, Form()] = None,
        multimask_output: Annotated[bool, Form()] = True,
        return_logits: Annotated[bool, Form()] = True,
        normalize_coords: Annotated[bool, Form()] = True,
    ) -> dict[str, str]:
        predictor.set_image(Image.open(image.file).convert("RGB"))
        masks, scores, logits = predictor.predict(
            point_coords=array(point_coords),
            point_labels=array(point_labels),
            box=array(box),
            mask_input=array(mask_input),
            multimask_output=multimask_output,
            return_logits=return_logits,
            normalize_coords=normalize_coords,
        )
        order = np.argsort(scores)[::-1]
        return {
            "masks": str(masks[order].tolist()),
            "scores": str(scores[order].tolist()),
            "logits": str(logits[order].tolist()),
        }

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "OK"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--config")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    app = create_baseline(args.checkpoint, args.config)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

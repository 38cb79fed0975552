"""Python client for sam2-server: upload an image once, then prompt it many times.

```python
from sam2_server.client import Client

with Client("http://localhost:8000", token) as sam:
    result = sam.segment("cat.png", points=[[120, 100]])
    result.masks[0]  # bool H x W, the best candidate
    again = sam.segment(result.image_id, points=[[120, 100]], mask_input=result.logits[0])
```

The server caches image embeddings by the SHA-256 of the uploaded bytes, so
the client computes that id itself: `segment(image)` asks `GET
/v1/images/{id}` and uploads only when the server does not have it, and an
image this client already knows to be on the server is prompted in one
request. An image the server evicted meanwhile (a 404 from the segment route)
is uploaded again and the prompt retried once.

Masks travel as COCO RLE, not PNG: SAM2's masks are a few solid regions, and
RLE costs a couple of numbers per region boundary per column, where a PNG pays
for deflate's per-row overhead and then base64's third. On a 1800x1200 disc
the RLE is 1.3 kB against 7.3 kB of PNG (pycocotools' C decoder is also
faster than PNG decoding); PNG only wins on speckled masks, which SAM2 rarely
gives. Low-res logits travel as packed float32 (exact).

`automatic_masks(image)` takes the same upload-once path to the
automatic-masks route. `open_video(...)` opens a video session
(`VideoSession`): prompts, a propagation read line by line from the NDJSON
stream as the server computes frames (closing it closes the connection,
which stops the server's work), and `close()`.

A session serves one request at a time (the server answers a second one
meanwhile with a 409 and `Retry-After`). Leaving a propagation early (`break`,
`close()`) frees the session only once the server has finished the frame in
flight, which the client cannot see; so for 10 s after leaving, the session's
calls (prompt, remove_object, reset, objects, a new propagate) that meet that
busy 409 wait and send again, polling from 50 ms up to min(Retry-After, 1 s).
Any other 409 (a propagation this client is still reading, or another
client's) is raised at once, as before: the server never queues a call behind
a propagation of unknown length, and neither does the client.

Against a plain Livepeer runner (no `/v1` routes: `POST /v1/images` itself
answers 404 or 405), the client falls back to `POST /segment-anything-2`
with the same `Result`, and remembers that per client (automatic masks and
video sessions have no such fallback: a `Sam2Error` says so). The sans-IO design
keeps one implementation of that logic for both clients: each operation is a
generator that yields the HTTP calls it needs and receives their responses;
`Client` drives it with `httpx.Client`, `AsyncClient` with
`httpx.AsyncClient` (and runs the CPU-heavy decoding in a worker thread so the
event loop stays free). A propagation is the one exception: a stream, read
by `Propagation` / `AsyncPropagation` with each client's own streaming call.

This package never imports torch, FastAPI or the server's engine. Its layout:
`_core` holds the flows and what a client learns (sans-IO), `_wire` the request
bodies and answer decoding, `_inputs` how images and videos become bytes,
`_errors` `Sam2Error`; `_async` is `AsyncClient`, and `_sync` (`Client`) is
generated from it by scripts/unasync.py.
"""

from __future__ import annotations

from sam2_server.domain import image_id_of  # the server's definition, for clients to compute

from ._async import AsyncClient, AsyncPropagation, AsyncVideoSession
from ._core import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from ._core import VIDEOS_PATH as VIDEOS_PATH
from ._core import _close_video_flow as _close_video_flow  # private: tests drive the flows
from ._errors import Sam2Error
from ._errors import error_of as error_of
from ._inputs import FRAME_SUFFIXES as FRAME_SUFFIXES
from ._inputs import Frames as Frames
from ._inputs import ImageLike, encode_image, frame_files
from ._inputs import VideoFile as VideoFile
from ._inputs import _resolve as _resolve  # private: tests check what counts as an id
from ._sync import Client, Propagation, VideoSession
from ._wire import AUTOMATIC_OPTIONS as AUTOMATIC_OPTIONS
from ._wire import LOW_RES as LOW_RES
from ._wire import MASK_FORMAT as MASK_FORMAT
from ._wire import AutomaticMask, AutomaticOptions, Result, VideoFrame
from ._wire import decode_automatic as decode_automatic
from ._wire import decode_frame as decode_frame
from ._wire import decode_masks as decode_masks
from ._wire import pack as pack
from ._wire import unpack as unpack

__all__ = [
    "AsyncClient",
    "AsyncPropagation",
    "AsyncVideoSession",
    "AutomaticMask",
    "AutomaticOptions",
    "Client",
    "ImageLike",
    "Propagation",
    "Result",
    "Sam2Error",
    "VideoFrame",
    "VideoSession",
    "encode_image",
    "frame_files",
    "image_id_of",
]

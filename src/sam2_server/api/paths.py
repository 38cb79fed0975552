"""Every route's path, in one place that imports nothing.

The route modules, the app's guard and metrics, and the cluster's router
all name paths; they import them from here, so that no route module (nor the
cluster, which must not pull in FastAPI routes to compute a routing key)
imports another for a constant. The paths are the contracts': fixed.
"""

from __future__ import annotations

SEGMENT_PATH = "/segment-anything-2"  # Livepeer's route
IMAGES_PATH = "/v1/images"  # the native API's images, automatic masks under them
VIDEOS_PATH = "/v1/videos"  # video sessions
MODELS_PATH = "/v1/models"  # the served models, their families and what each does
OPS_PATHS = ("/stats", "/metrics")
HARDWARE_PATHS = ("/hardware/info", "/hardware/stats")  # Livepeer's runner's
WEB_PREFIX = "/web"  # the page's assets; the page itself is "/"
DOCS_FILES = ("/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/docs/favicon-32x32.png")
# The annotation tools' surfaces, each at the paths its tool calls (docs/tools.md).
LABEL_STUDIO_PATH = "/labelstudio"  # Label Studio's ML backend URL: http://host:port/labelstudio
XANYLABELING_PATH = "/xanylabeling"  # X-AnyLabeling's server URL; its client adds /v1/...
ROBOFLOW_PATH = "/sam2"  # Roboflow inference's /sam2/embed_image and /sam2/segment_image
# CVAT reaches interactors through the Nuclio dashboard's API at a host's root.
CVAT_PATHS = ("/api/functions", "/api/function_invocations")
TOOL_PREFIXES = (LABEL_STUDIO_PATH, XANYLABELING_PATH, ROBOFLOW_PATH, *CVAT_PATHS)
# Whole paths the metrics name as themselves (the rest: by their prefix).
ROUTES = (
    SEGMENT_PATH,
    "/health",
    "/version",
    *OPS_PATHS,
    MODELS_PATH,
    "/openapi.json",
    "/docs",
    "/",
)

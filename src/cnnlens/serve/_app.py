"""The HTTP side of the explorer: Starlette routes over :class:`Explorer`.

Every answer is JSON except the page, its two assets and PNG pictures. Errors are one-line
JSON messages: ``{"error": "..."}`` with 400 (bad input), 404 (unknown image, job, sample,
route), 413 (upload too large), 415 (not an image type); nothing sends a traceback.
No route takes a file path: images arrive as request bodies, samples and layers by name.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import unquote

from jinja2 import ChoiceLoader, Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..dataset import FeatureStore
from ..errors import InputError
from ..evaluate._deletion import CURVE_STEPS
from ..images import decode_image
from ..models import LoadedModel
from ._errors import NotFoundError
from ._explorer import Explorer, ImageEntry, Limits
from ._jobs import one_line
from ._pictures import png_bytes

__all__ = ["create_app"]

log = logging.getLogger("cnnlens.serve")

IMAGE_TYPES = (
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/bmp",
    "image/x-ms-bmp",
    "image/tiff",
    "application/octet-stream",
)

# name -> (package, folder, media type): a fixed list, so no request names a file.
VISUAL_STEPS, VISUAL_SIZE = 96, 128  # feature visualization defaults: a minute at most here

ASSETS = {
    "explorer.js": ("cnnlens.serve", "static", "text/javascript"),
    "explorer.css": ("cnnlens.serve", "static", "text/css"),
    "cnnlens.css": ("cnnlens.render", "templates", "text/css"),  # shared with the report
}

# The page loads only what this app serves (inline scripts of the shared base template
# only by their hash, filled in by create_app); pictures may also be data: URIs.
CSP = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'{scripts}; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP.format(scripts=""),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class HTTPError(InputError):
    """A user error with its own status code (413, 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=SECURITY_HEADERS)


Endpoint = Callable[[Request], Response]


def handled(endpoint: Callable[[Explorer, Request], Any]) -> Callable[[Explorer], Endpoint]:
    """A route body made safe: dicts become JSON; user errors a 4xx with one line; anything
    else a logged 500 with one line (the traceback goes to the server's log only)."""

    def bind(explorer: Explorer) -> Endpoint:
        @functools.wraps(endpoint)
        def run(request: Request) -> Response:
            try:
                result = endpoint(explorer, request)
            except HTTPError as exc:
                return error(exc.status, str(exc))
            except NotFoundError as exc:
                return error(404, str(exc))
            except InputError as exc:
                return error(400, str(exc))
            except Exception as exc:
                log.exception("error in %s %s", request.method, request.url.path)
                return error(500, f"internal error: {type(exc).__name__}: {exc}")
            if isinstance(result, Response):
                for key, value in SECURITY_HEADERS.items():  # the page sets its own CSP
                    result.headers.setdefault(key, value)
                return result
            return JSONResponse(result, headers=SECURITY_HEADERS)

        return run

    return bind


def _int(request: Request, name: str, default: int | None = None) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        if default is None:
            raise InputError(f"missing query parameter {name!r}")
        return default
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{name}={text!r} is not an integer") from None


def _text(request: Request, name: str) -> str:
    text = request.query_params.get(name)
    if not text:
        raise InputError(f"missing query parameter {name!r}")
    return text


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


def _entry(explorer: Explorer, request: Request) -> ImageEntry:
    return explorer.entry(str(request.path_params["image"]))


# --------------------------------------------------------------------------- routes


def render_page(model_name: str) -> str:
    return _templates().get_template("explorer.html").render(model=model_name)


def inline_script_hashes(html: str) -> list[str]:
    """CSP sources (``'sha256-...'``) for the page's inline scripts."""
    bodies = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in bodies
    ]


def page(explorer: Explorer, request: Request) -> Response:
    html = render_page(explorer.model.name)
    policy = CSP.format(scripts="".join(" " + h for h in inline_script_hashes(html)))
    return HTMLResponse(html, headers={"Content-Security-Policy": policy})


def asset(explorer: Explorer, request: Request) -> Response:
    name = str(request.path_params["name"])
    if name not in ASSETS:
        raise NotFoundError(f"no asset {name!r}")
    return Response(_asset_bytes(name), media_type=ASSETS[name][2])


def api_index(explorer: Explorer, request: Request) -> Any:
    return {"routes": ROUTE_DOCS}


def model_info(explorer: Explorer, request: Request) -> Any:
    return explorer.model_json()


def classes(explorer: Explorer, request: Request) -> Any:
    limit = _int(request, "limit", 20)
    if not 1 <= limit <= 2000:
        raise InputError(f"limit must be between 1 and 2000, got {limit}")
    return {"classes": explorer.classes_json(request.query_params.get("q", ""), limit)}


def layer_list(explorer: Explorer, request: Request) -> Any:
    return {"layers": explorer.layers_json(), "default": explorer.default_layer()}


def samples(explorer: Explorer, request: Request) -> Any:
    return {"samples": explorer.model_json()["samples"]}


def choose_sample(explorer: Explorer, request: Request) -> Any:
    return explorer.image_json(explorer.add_sample(str(request.path_params["name"])))


def image_info(explorer: Explorer, request: Request) -> Any:
    return explorer.image_json(_entry(explorer, request))


def picture(explorer: Explorer, request: Request) -> Response:
    return Response(png_bytes(_entry(explorer, request).picture), media_type="image/png")


def predictions(explorer: Explorer, request: Request) -> Any:
    entry = _entry(explorer, request)
    k = _int(request, "k", 5)
    if not 1 <= k <= 100:
        raise InputError(f"k must be between 1 and 100, got {k}")
    return {"image": entry.id, "top": explorer.top(entry, k)}


def _explain_request(explorer: Explorer, request: Request) -> Any:
    entry = _entry(explorer, request)
    query = request.query_params
    parsed = explorer.explain_request(
        entry, _text(request, "method"), query.get("target"), query.get("layer") or None, query
    )
    return entry, parsed


def explain_route(explorer: Explorer, request: Request) -> Any:
    entry, parsed = _explain_request(explorer, request)
    return explorer.explain_json(
        entry,
        parsed,
        display=request.query_params.get("display", "heatmap"),
        values=_flag(request, "values"),
    )


def curves(explorer: Explorer, request: Request) -> Any:
    entry, parsed = _explain_request(explorer, request)
    # the report's and ``cnnlens evaluate``'s steps: the same AUCs in every view
    return explorer.curves_json(entry, parsed, _int(request, "steps", CURVE_STEPS))


def activation_grid(explorer: Explorer, request: Request) -> Any:
    entry = _entry(explorer, request)
    return explorer.inside.activations_json(
        entry, _text(request, "layer"), _int(request, "top", 64)
    )


def channel(explorer: Explorer, request: Request) -> Any:
    entry = _entry(explorer, request)
    return explorer.inside.channel_json(entry, _text(request, "layer"), _int(request, "channel"))


def weights(explorer: Explorer, request: Request) -> Any:
    return explorer.inside.weights_json(_text(request, "layer"), _int(request, "channel"))


def visualization(explorer: Explorer, request: Request) -> Any:
    return explorer.inside.visualization_json(
        _text(request, "layer"),
        _int(request, "channel"),
        _int(request, "steps", VISUAL_STEPS),
        _int(request, "size", VISUAL_SIZE),
    )


def index_info(explorer: Explorer, request: Request) -> Any:
    return explorer.index.index_json()


def index_item(explorer: Explorer, request: Request) -> Response:
    return Response(
        explorer.index.item_png(int(request.path_params["row"])), media_type="image/png"
    )


def start_job(explorer: Explorer, request: Request) -> Any:
    query = request.query_params
    kind = _text(request, "kind")
    if kind == "explain":
        entry = explorer.entry(_text(request, "image"))
        parsed = explorer.explain_request(
            entry, _text(request, "method"), query.get("target"), query.get("layer") or None, query
        )
        job = explorer.explain_job(entry, parsed, query.get("display", "heatmap"))
    elif kind == "visualize":
        job = explorer.inside.visualize_job(
            _text(request, "layer"),
            _int(request, "channel"),
            _int(request, "steps", VISUAL_STEPS),
            _int(request, "size", VISUAL_SIZE),
        )
    elif kind == "neighbors":
        job = explorer.index.neighbors_job(
            explorer.entry(_text(request, "image")), _int(request, "k", 8)
        )
    elif kind == "patches":
        job = explorer.index.patches_job(
            _text(request, "layer"), _int(request, "channel"), _int(request, "k", 9)
        )
    else:
        raise InputError(
            f"unknown job kind {kind!r}; one of explain, visualize, neighbors, patches"
        )
    return JSONResponse(job.as_json(), status_code=202)


def job_status(explorer: Explorer, request: Request) -> Any:
    job = explorer.jobs.get(str(request.path_params["job"]))
    if job is None:
        raise NotFoundError(f"no job {request.path_params['job']!r}")
    return job.as_json()


def cancel_job(explorer: Explorer, request: Request) -> Any:
    job = explorer.jobs.cancel(str(request.path_params["job"]))
    if job is None:
        raise NotFoundError(f"no job {request.path_params['job']!r}")
    return job.as_json()


def _read_upload(explorer: Explorer, request: Request, body: bytes) -> Any:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in IMAGE_TYPES:
        raise HTTPError(
            415,
            f"expected an image body (image/png, image/jpeg, ...), got {kind or 'no content type'}",
        )
    if not body:
        raise InputError("empty upload: the body holds no bytes")
    # A display name only (the page sends it URI-encoded); never used as a path.
    name = unquote(request.headers.get("x-filename", ""))[:80].strip() or "upload"
    picture = decode_image(io.BytesIO(body), name=name, max_pixels=explorer.limits.max_pixels)
    return explorer.image_json(explorer.add_picture(picture, name))


async def upload(request: Request) -> Response:
    """POST /api/images: the body is the image file itself. Size is checked from the
    header and while reading, so an oversized body is never held whole in memory."""
    explorer: Explorer = request.app.state.explorer
    limit = explorer.limits.max_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return error(413, f"upload of {int(declared)} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return error(413, f"upload is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    bound = handled(lambda ex, req: _read_upload(ex, req, body))(explorer)
    return await run_in_threadpool(bound, request)


# --------------------------------------------------------------------------- app

ROUTES: list[tuple[str, str, Callable[[Explorer, Request], Any], str]] = [
    ("/", "GET", page, "the explorer page"),
    ("/static/{name}", "GET", asset, "the page's script and stylesheets"),
    ("/api", "GET", api_index, "this list of routes"),
    (
        "/api/model",
        "GET",
        model_info,
        "model name, input size, methods with options, samples, limits",
    ),
    ("/api/classes", "GET", classes, "class labels matching q (completion); limit"),
    (
        "/api/layers",
        "GET",
        layer_list,
        "layers with a (C, h, w) map: shape, receptive field; the default layer",
    ),
    ("/api/samples", "GET", samples, "the bundled sample photos"),
    ("/api/samples/{name}", "POST", choose_sample, "use a sample photo: image info and top-5"),
    ("/api/images/{image}", "GET", image_info, "image info: the crop the model saw, top-5"),
    ("/api/images/{image}/picture.png", "GET", picture, "the crop the model saw, PNG"),
    ("/api/images/{image}/predictions", "GET", predictions, "top-k classes; k"),
    (
        "/api/images/{image}/explain",
        "GET",
        explain_route,
        "a map: method, target, layer, display, values, opt.NAME",
    ),
    (
        "/api/images/{image}/curves",
        "GET",
        curves,
        "deletion/insertion curves and AUCs for a map; same parameters and steps",
    ),
    (
        "/api/images/{image}/activations",
        "GET",
        activation_grid,
        "a layer's most active channels as tiles; layer, top",
    ),
    (
        "/api/images/{image}/channel",
        "GET",
        channel,
        "one channel's map over the image, its peak and receptive field; layer, channel",
    ),
    (
        "/api/weights",
        "GET",
        weights,
        "a convolution channel's weights as a picture; layer, channel",
    ),
    (
        "/api/visualization",
        "GET",
        visualization,
        "the feature visualization job for layer, channel (steps, size) if asked for, else null",
    ),
    (
        "/api/jobs",
        "POST",
        start_job,
        "start long work: kind=explain|visualize|neighbors|patches with its parameters",
    ),
    ("/api/jobs/{job}", "GET", job_status, "a job's state, progress and, when done, result"),
    ("/api/jobs/{job}", "DELETE", cancel_job, "cancel a job"),
    ("/api/index", "GET", index_info, "the feature store given with --index"),
    ("/api/index/items/{row:int}.png", "GET", index_item, "a dataset item as the model saw it"),
]

ROUTE_DOCS = [{"method": m, "path": p, "does": d} for p, m, _, d in ROUTES] + [
    {"method": "POST", "path": "/api/images", "does": "upload an image (the body; image/* type)"}
]


@functools.lru_cache(maxsize=1)
def _templates() -> Environment:
    return Environment(
        loader=ChoiceLoader(
            [
                PackageLoader("cnnlens.serve", "templates"),
                PackageLoader("cnnlens.render", "templates"),
            ]
        ),
        autoescape=select_autoescape(["html"]),
    )


@functools.cache
def _asset_bytes(name: str) -> bytes:
    package, folder, _ = ASSETS[name]
    return resources.files(package).joinpath(folder, name).read_bytes()


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    detail = exc.detail if isinstance(exc, HTTPException) else "not found"
    return error(status, f"{request.method} {request.url.path}: {detail}")


def create_app(
    model: LoadedModel,
    *,
    index: FeatureStore | str | os.PathLike[str] | None = None,
    dataset: Any = None,
    limits: Limits | None = None,
) -> Starlette:
    """The explorer as an ASGI app for ``model`` (run it with uvicorn, or test it with
    Starlette's ``TestClient``). ``index``: a feature store (or its folder) for the dataset
    views; ``dataset``: the data it indexes (default: the one the store names)."""
    store = FeatureStore.open(index) if isinstance(index, (str, os.PathLike)) else index
    explorer = Explorer(model, store=store, dataset=dataset, limits=limits)
    routes = [Route(p, handled(fn)(explorer), methods=[m]) for p, m, fn, _ in ROUTES]
    routes.append(Route("/api/images", upload, methods=["POST"]))
    handler: Callable[[Request, Exception], Awaitable[Response]] = _not_found

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:  # a running job stops at its next forward pass
            explorer.jobs.shutdown()

    app = Starlette(routes=routes, exception_handlers={HTTPException: handler}, lifespan=lifespan)
    app.state.explorer = explorer
    return app

"""The HTTP API (FastAPI) and the Serve application: ``SgMgIngress`` (HTTP, decoding, resizing, encoding the answer)
in front of ``SgMgModel`` (batched forward passes, :mod:`pipelines.serve.model`).

Routes: ``POST /v1/segment`` (multipart: a ``video`` file or a ``video_uri``, one or more ``text``, optional
``threshold`` and ``return``), ``GET /healthz``, ``GET /v1/model``, ``GET /`` (a page to try it), and FastAPI's
``/openapi.json`` and ``/docs``. Every error is ``{"error": {"code", "message"}}`` with a 4xx status that says what
was wrong with the request; a fault of the service itself is a 500 with a ``request_id`` that is in the log.

:func:`create_api` builds the FastAPI app over any :class:`Backend`, so the HTTP layer also runs in-process over a
local model (tests, notebooks); :func:`build_app` is the Serve application builder of ``pipelines/configs/serve.yaml``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from pipelines.serve import inputs
from pipelines.serve.inputs import ApiError
from pipelines.serve.responses import PngZipWriter, encode_frames
from pipelines.serve.runner import LoadedModel, WindowJob, WindowResult, run_jobs
from pipelines.serve.settings import AppSettings, Limits

logger = logging.getLogger("ray.serve.sgmg")  # a child of Serve's logger: lands in the replica logs

SEGMENT_PATH = "/v1/segment"


class Backend(Protocol):
    """Where the ingress sends windows: the model deployment's handle, or a model in this process."""

    async def segment(self, job: WindowJob) -> WindowResult:
        """Answer one window."""

    async def info(self) -> dict[str, Any] | None:
        """``GET /v1/model``'s body; None while the model is loading."""


class LocalBackend:
    """A :class:`Backend` over a model loaded in this process (no Ray): tests and notebooks."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    async def segment(self, job: WindowJob) -> WindowResult:
        return (await asyncio.to_thread(run_jobs, self.loaded, [job]))[0]

    async def info(self) -> dict[str, Any] | None:
        return dict(self.loaded.info)


class HandleBackend:
    """A :class:`Backend` over the ``SgMgModel`` deployment's handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def segment(self, job: WindowJob) -> WindowResult:
        return await self.handle.segment.remote(job)

    async def info(self) -> dict[str, Any] | None:
        try:
            return await asyncio.wait_for(self.handle.info.remote(), timeout=5.0)
        except Exception as exc:  # noqa: BLE001 - no replica yet, or one still starting: not ready
            logger.info("model deployment not ready: %r", exc)
            return None


class BodyLimit:
    """ASGI middleware: answers 415/413 from the headers of ``POST /v1/segment`` before its body is read, and stops a
    body without ``Content-Length`` (chunked) as soon as it passes the limit."""

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != SEGMENT_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            inputs.check_headers("POST", headers.get("content-type"), headers.get("content-length"), self.limits)
        except ApiError as err:
            await JSONResponse(err.body(), status_code=err.status)(scope, receive, send)
            return
        seen = 0
        limit = self.limits.max_upload_bytes

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise ApiError(413, "payload_too_large", f"the request body passed {limit} bytes (the limit)")
            return message

        await self.app(scope, counted, send)


_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "request_id": {"type": "string"},
            },
        }
    },
}


def _segment_openapi(limits: Limits) -> dict[str, Any]:
    """The request body and answers of ``POST /v1/segment`` for ``/openapi.json`` (the form is parsed by hand, so
    that each problem gets its own error code, and described here)."""
    errors = {"application/json": {"schema": _ERROR_SCHEMA}}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["text"],
                        "properties": {
                            "video": {
                                "type": "string",
                                "format": "binary",
                                "description": "mp4, webm, mov, mkv, avi, gif, or a zip of JPEG/PNG frames",
                            },
                            "video_uri": {"type": "string", "description": "s3:// or file:// under an allowed prefix"},
                            "text": {
                                "type": "array",
                                "items": {"type": "string", "minLength": 1, "maxLength": limits.max_text_chars},
                                "minItems": 1,
                                "maxItems": limits.max_expressions,
                                "description": "one referring expression per field",
                            },
                            "threshold": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
                            "return": {"type": "string", "enum": list(inputs.RETURN_FORMATS), "default": "rle"},
                        },
                    },
                    "encoding": {"text": {"style": "form", "explode": True}},
                }
            },
        },
        "responses": {
            "200": {
                "description": "masks per expression and frame (JSON, COCO RLE) or a zip of PNGs",
                "content": {"application/json": {"schema": {"type": "object"}}, "application/zip": {}},
            },
            **{
                code: {"description": what, "content": errors}
                for code, what in {
                    "400": "bad input",
                    "403": "video_uri outside the allowed prefixes",
                    "404": "video_uri names nothing",
                    "413": "over a size limit",
                    "415": "not multipart/form-data",
                    "504": "took longer than the request timeout",
                }.items()
            },
        },
    }


def create_api(settings: AppSettings, backend: Backend | None = None) -> FastAPI:
    """The FastAPI app; ``app.state.backend`` is ``backend`` (set later by the Serve ingress when None)."""
    limits = settings.limits
    app = FastAPI(
        title="SgMg referring video object segmentation",
        version="1",
        description="Video + sentences -> a mask of the referred object in every frame.",
    )
    app.state.backend = backend
    app.add_middleware(BodyLimit, limits=limits)
    page = resources.files("pipelines.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        body = ApiError(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail)).body()
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(ApiError(400, "invalid_request", str(exc.errors())).body(), status_code=400)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz", summary="200 once the model is loaded, 503 before")
    async def healthz() -> JSONResponse:
        info = await app.state.backend.info() if app.state.backend is not None else None
        if info is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/model", summary="the served model: name, version, URI, variant, parameters, when loaded")
    async def model_info() -> JSONResponse:
        info = await app.state.backend.info() if app.state.backend is not None else None
        if info is None:
            raise ApiError(503, "model_loading", "the model is still loading; retry in a few seconds")
        return JSONResponse(info)

    @app.post(
        SEGMENT_PATH, summary="segment the objects the sentences refer to", openapi_extra=_segment_openapi(limits)
    )
    async def segment(request: Request) -> Response:
        request_id = uuid.uuid4().hex
        try:
            async with asyncio.timeout(limits.request_timeout_s):
                return await _segment(request, app.state.backend, settings)
        except ApiError as err:
            return JSONResponse(err.body(), status_code=err.status)
        except TimeoutError:
            err = ApiError(504, "timeout", f"the request took longer than {limits.request_timeout_s} s")
            return JSONResponse(err.body(), status_code=504)
        except Exception:
            logger.exception("request %s failed", request_id)
            err = ApiError(500, "internal_error", f"the service failed on this request (request id {request_id})")
            return JSONResponse(err.body(request_id), status_code=500)

    return app


async def _segment(request: Request, backend: Backend | None, settings: AppSettings) -> Response:
    limits = settings.limits
    t0 = time.perf_counter()
    if backend is None:
        raise ApiError(503, "model_loading", "the service is starting; retry in a few seconds")
    try:
        form = await request.form(max_files=1, max_fields=limits.max_expressions + 8, max_part_size=1 << 20)
    except (MultiPartException, StarletteHTTPException) as exc:  # Starlette wraps the parser's errors in a 400
        detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
        raise ApiError(400, "bad_multipart", f"cannot parse the multipart body: {detail}") from None
    try:
        texts, threshold, fmt = inputs.check_fields(form, limits)
        with inputs.temp_folder() as tmp:
            path = await asyncio.to_thread(inputs.save_video, form, limits, Path(tmp))
            source = await asyncio.to_thread(inputs.open_source, path, limits)
            return await _run_windows(source, texts, threshold, fmt, backend, settings, t0)
    finally:
        await form.close()


async def _run_windows(
    source: Any,
    texts: list[str],
    threshold: float,
    fmt: str,
    backend: Backend,
    settings: AppSettings,
    t0: float,
) -> Response:
    from sgmg.inference.predictor import preprocess_frames
    from sgmg.inference.sources import InvalidVideoError

    timing = {"decode": 0.0, "preprocess": 0.0, "model": 0.0, "encode": 0.0}
    frames_out: list[list[dict[str, Any]]] = [[] for _ in texts]
    writer = PngZipWriter() if fmt == "png_zip" else None
    model: dict[str, Any] | None = None
    windows = source.windows(settings.window)
    while True:
        t = time.perf_counter()
        try:
            item = await asyncio.to_thread(next, windows, None)
        except InvalidVideoError as exc:
            raise ApiError(400, exc.code, str(exc)) from None
        timing["decode"] += time.perf_counter() - t
        if item is None:
            break
        start, frames = item
        t = time.perf_counter()
        video = (await asyncio.to_thread(preprocess_frames, frames, settings.short_side)).numpy()
        timing["preprocess"] += time.perf_counter() - t
        t = time.perf_counter()
        job = WindowJob(video, texts, source.size, threshold, model_uri=model["uri"] if model else None)
        result = await backend.segment(job)
        timing["model"] += time.perf_counter() - t
        model = model or result.model
        t = time.perf_counter()
        await asyncio.to_thread(_encode_window, result, frames.shape[:3], start, frames_out, writer)
        timing["encode"] += time.perf_counter() - t
    timing["total"] = time.perf_counter() - t0
    timing_ms = {k: round(v * 1000.0, 1) for k, v in timing.items()}
    if writer is not None:
        data = await asyncio.to_thread(writer.finish)
        headers = {"X-Model-Version": str(model.get("version")), "X-Timing-Ms": str(timing_ms["total"])}
        return Response(data, media_type="application/zip", headers=headers)
    h, w = source.size
    body = {
        "model": model,
        "video": {"num_frames": len(source), "height": h, "width": w, "fps": source.fps},
        "expressions": [{"text": text, "frames": frames_out[e]} for e, text in enumerate(texts)],
        "timing_ms": timing_ms,
    }
    return JSONResponse(body)


def _encode_window(
    result: WindowResult,
    shape: tuple[int, int, int],
    start: int,
    frames_out: list[list[dict[str, Any]]],
    writer: PngZipWriter | None,
) -> None:
    for e in range(len(frames_out)):
        masks = result.unpack(e, shape)
        if writer is not None:
            writer.add(e, start, masks)
        else:
            frames_out[e].extend(encode_frames(masks, np.asarray(result.scores[e]), start))


def build_app(args: dict[str, Any] | None = None) -> Any:
    """The Serve application builder (``import_path: pipelines.serve.app:build_app``); ``args`` are the config's
    ``applications[].args`` (:class:`pipelines.serve.settings.AppSettings`), checked here, on the driver."""
    from ray import serve

    from pipelines.serve.model import SgMgModel

    settings = AppSettings.from_dict(args)

    @serve.deployment(name="SgMgIngress", max_ongoing_requests=32)
    @serve.ingress()  # late-bound: the app is built in the replica, over the model deployment's handle
    class SgMgIngress:
        """HTTP in front of the model deployment: parsing, checks, decoding, resizing and encoding the answer."""

        def __init__(self, model: Any, app_args: dict[str, Any]) -> None:
            self._api = create_api(AppSettings.from_dict(app_args), HandleBackend(model))

        def __serve_build_asgi_app__(self) -> FastAPI:
            return self._api

    model = SgMgModel.bind(settings.model_uri, settings.tracking_uri, settings.reload_interval_s)
    return SgMgIngress.bind(model, settings.to_dict())

"""HTTP serving of a registered model: ``GET /health`` and ``POST /predict``.

The model is loaded once, through :func:`components.predict.open_model` (sha256 check, the
package's own preprocessing geometry), and requests go through the same
:func:`~components.predict.predict_file` as ``cxrgaze predict``, so both answer alike.

``POST /predict`` takes one DICOM, PNG or JPEG file, either as the raw body (``Content-Type``
``application/dicom``, ``image/png``, ``image/jpeg`` or ``application/octet-stream``) or as the
field ``file`` of a ``multipart/form-data`` form. The kind is read from the bytes (``DICM`` at
offset 128, the PNG or JPEG signature), not trusted from the header. The answer is the JSON of
``cxrgaze predict`` plus ``saliency``: ``shape`` [H, W] and ``base64``, the map as little-endian
float32 in row-major order (``np.frombuffer(base64.b64decode(s), "<f4").reshape(shape)``); with
``?overlay=true`` also ``overlay_png_base64``. Errors are ``{"detail": message}``: 400 for a file
that does not decode, 413 for a body over the size cap, 415 for an unsupported kind.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import logging
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from components.model_package import parse_model_uri
from components.predict import LoadedModel, open_model, predict_file
from model_lib.data.errors import DataError

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
RAW_TYPES = ("application/dicom", "image/png", "image/jpeg", "application/octet-stream")
MULTIPART = "multipart/form-data"
UPLOAD_FIELD = "file"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def sniff_suffix(data: bytes) -> str | None:
    """The file suffix ``read_image`` needs for these bytes, from their signature; else None."""
    if data[128:132] == b"DICM":
        return ".dcm"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    return None


def _header_params(value: str) -> tuple[str, dict[str, str]]:
    """A header value's media type (lower case) and its parameters, parsed by the stdlib."""
    parser = email.parser.HeaderParser(policy=email.policy.HTTP)
    header = parser.parsestr(f"Content-Type: {value}\n\n")["Content-Type"]
    return header.content_type.lower(), dict(header.params)


def multipart_file(content_type: str, body: bytes) -> tuple[bytes, str]:
    """(bytes, file name) of the form field ``file`` of a ``multipart/form-data`` body.

    Split on the boundary by hand: the data is binary and must come back byte for byte.

    Raises:
        HTTPException: 400 when the boundary or the field is missing.
    """
    _, params = _header_params(content_type)
    boundary = params.get("boundary")
    if not boundary:
        raise HTTPException(400, "multipart/form-data without a boundary parameter")
    for segment in (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))[1:]:
        if segment.startswith(b"--"):
            break  # the closing delimiter
        head, sep, data = segment.partition(b"\r\n\r\n")
        if not sep:
            raise HTTPException(400, "multipart/form-data part without a blank line after headers")
        headers = email.parser.BytesHeaderParser(policy=email.policy.HTTP).parsebytes(
            head.lstrip(b" \t").removeprefix(b"\r\n") + b"\r\n\r\n"
        )
        disposition = headers.get("content-disposition")
        if disposition is not None and disposition.params.get("name") == UPLOAD_FIELD:
            return data, disposition.params.get("filename") or "upload"
    raise HTTPException(400, f"multipart/form-data has no field {UPLOAD_FIELD!r}")


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``cap`` bytes (declared or sent)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise HTTPException(413, f"body of {int(declared):,} bytes exceeds the {cap:,} byte cap")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise HTTPException(413, f"body exceeds the {cap:,} byte cap")
        chunks.append(chunk)
    return b"".join(chunks)


def upload(content_type: str, body: bytes) -> tuple[bytes, str, str]:
    """(file bytes, name to report, suffix) of a request, checked for kind.

    Raises:
        HTTPException: 400 (empty, bad form), 415 (a media type or file kind not supported).
    """
    kind, _ = _header_params(content_type) if content_type else ("application/octet-stream", {})
    if kind == MULTIPART:
        data, name = multipart_file(content_type, body)
    elif kind in RAW_TYPES:
        data, name = body, "upload"
    else:
        sent = content_type.split(";")[0].strip()
        raise HTTPException(
            415,
            f"Content-Type {sent!r} is not supported: send the file as the body with one of "
            f"{', '.join(RAW_TYPES)}, or as the field {UPLOAD_FIELD!r} of {MULTIPART}",
        )
    name = Path(name).name or "upload"  # a client's path is for messages only
    if not data:
        raise HTTPException(400, f"{name}: empty file")
    suffix = sniff_suffix(data)
    if suffix is None:
        raise HTTPException(415, f"{name}: not a DICOM (no 'DICM' at byte 128), PNG or JPEG file")
    return data, name, suffix


def saliency_field(saliency: np.ndarray) -> dict[str, Any]:
    """The map as shape + base64 of little-endian float32, row-major."""
    values = np.ascontiguousarray(saliency, dtype="<f4")
    return {
        "shape": list(values.shape),
        "dtype": "float32",
        "byte_order": "little",
        "base64": base64.b64encode(values.tobytes()).decode("ascii"),
    }


def create_app(model: LoadedModel, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI application around one loaded model."""
    app = FastAPI(title="cxr-gaze", summary="Chest X-ray diagnosis + gaze saliency")
    # One inference at a time: torch already spreads one forward pass over the cores.
    lock = threading.Lock()

    def infer(data: bytes, name: str, suffix: str, overlay: bool) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="cxr-gaze-upload-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(data)
            try:
                with lock:
                    prediction = predict_file(model, path)
            except DataError as err:
                where = f"{name}, field '{err.field}'" if err.field else name
                raise HTTPException(400, f"{where}: {err.message}") from err
        answer = {"source": name, **prediction.record(model)}
        answer["saliency"] = saliency_field(prediction.saliency)
        if overlay:
            png = prediction.overlay_png(model, name)
            answer["overlay_png_base64"] = base64.b64encode(png).decode("ascii")
        return answer

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": model.describe()}

    @app.post("/predict")
    async def predict(request: Request, overlay: bool = False) -> dict[str, Any]:
        body = await read_body(request, max_body_bytes)
        data, name, suffix = upload(request.headers.get("content-type", ""), body)
        return await run_in_threadpool(infer, data, name, suffix, overlay)

    return app


class _Stopped(Exception):
    """SIGINT or SIGTERM arrived; uvicorn has shut down gracefully and re-raised the signal."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped(signal.Signals(signum).name)


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn the signal uvicorn re-raises after its graceful shutdown into a normal return, so
    the ``with`` blocks around it (the model's downloaded files) are cleaned up and the process
    exits 0 instead of dying by the signal."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can set signal handlers; uvicorn does not either
        return
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS}
    try:
        yield
    except _Stopped as stop:
        logger.info("stopped by %s", stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Server(uvicorn.Server):
    """uvicorn's server, telling ``on_ready`` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_ready()


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port).

    Raises:
        OSError: the address is in use or not this machine's.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise OSError(err.errno, f"cannot listen on {host}:{port}: {reason}") from err


def serve(
    model_uri: str,
    *,
    tracking_uri: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_body_bytes: int = MAX_BODY_BYTES,
    on_ready: Callable[[str], None] = print,
) -> None:
    """Serve ``model_uri`` until SIGINT/SIGTERM, then return normally; ``on_ready`` gets the
    bound URL once the server accepts connections (with ``port=0`` the only way to learn it).

    Raises:
        OSError: cannot listen on ``host``:``port``.
        ValueError / LookupError / WeightsIntegrityError / RegistryUnreachable: the model
            cannot be loaded (see :func:`components.predict.open_model`).
    """
    parse_model_uri(model_uri)
    sock = listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://[{bound_host}]:{bound_port}" if ":" in bound_host else (
        f"http://{bound_host}:{bound_port}"
    )  # fmt: skip
    try:
        with open_model(model_uri, tracking_uri) as model:
            app = create_app(model, max_body_bytes)
            config = uvicorn.Config(app, lifespan="off", timeout_graceful_shutdown=5)
            with _stop_on_signals():
                _Server(config, lambda: on_ready(url)).run(sockets=[sock])
    finally:
        sock.close()

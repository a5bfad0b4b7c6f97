"""An HTTP front for a :class:`~torchtpu.serving.ServedModel`, on werkzeug.

- ``GET /`` or ``GET /v1/metadata``: the input and output specs, as JSON.
- ``POST /v1/predict`` (also ``/predict``): run the model.

  * ``Content-Type: application/json``: ``{"inputs": [...]}``, one nested list
    per input in order, or ``{"inputs": {"name": ...}}`` by input name.
  * ``Content-Type: application/x-npy``: one ``.npy`` array (a one-input model).
  * ``Content-Type: application/x-npz``: an ``.npz`` of arrays named as the
    inputs (or ``arr_0``, ``arr_1``... in order, as ``np.savez`` names them).

  The answer is JSON, ``{"outputs": ...}`` in the model's output structure
  (dicts stay dicts, tuples and lists become lists, arrays nested lists),
  unless ``Accept`` asks for ``application/x-npy`` (a one-output model) or
  ``application/x-npz`` (arrays named as ``/v1/metadata``'s outputs).

Errors are JSON, ``{"error": {"type": ..., "message": ...}}``: 400 for bad
JSON, wrong input count, names, dtypes or shapes, or an index out of range
inside the program; 404, 405, 406, 415; 413 for a body over
``max_content_length``; 500 if the program fails.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer
from werkzeug.serving import make_server as werkzeug_server
from werkzeug.wrappers import Request, Response

from torchtpu.serving.model import InputError, ServedModel

NPY = "application/x-npy"
NPZ = "application/x-npz"
JSON = "application/json"
DEFAULT_MAX_CONTENT_LENGTH = 64 * 1024 * 1024


def make_app(model: ServedModel, *, max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH) -> Any:
    """The WSGI application that serves ``model``.

    Example::

        app = make_app(torchtpu.serving.load("model.tpu"))
    """

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        request.max_content_length = max_content_length
        try:
            response = _route(model, request)
        except HTTPException as exc:
            response = _error(exc.code or 500, type(exc).__name__, exc.description or str(exc))
        return response(environ, start_response)

    return app


def make_server(
    model: ServedModel,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
) -> BaseWSGIServer:
    """A werkzeug server for ``model`` bound to ``host:port`` (``port=0``: any free
    port, then ``server.server_port``); ``serve_forever()`` runs it.

    Example::

        server = make_server(torchtpu.serving.load("model.tpu"), port=0)
        print(server.server_port)
        server.serve_forever()
    """
    app = make_app(model, max_content_length=max_content_length)
    return werkzeug_server(host, port, app)


def _route(model: ServedModel, request: Request) -> Response:
    if request.path in ("/", "/v1/metadata"):
        if request.method != "GET":
            return _error(405, "MethodNotAllowed", f"{request.path} answers GET")
        return _json(200, model.metadata())
    if request.path in ("/predict", "/v1/predict"):
        if request.method != "POST":
            return _error(405, "MethodNotAllowed", f"{request.path} answers POST")
        return _predict(model, request)
    return _error(404, "NotFound", f"no {request.path}; try POST /v1/predict or GET /v1/metadata")


def _predict(model: ServedModel, request: Request) -> Response:
    accept = _accepted(request)
    if accept is None:
        return _error(406, "NotAcceptable", f"answers are {JSON}, {NPY} or {NPZ}")
    try:
        args, kwargs = _inputs(request)
        flat = model.flat(*args, **kwargs)
    except InputError as exc:
        return _error(400, "InputError", str(exc))
    except IndexError as exc:
        return _error(400, "IndexOutOfRange", str(exc))
    except HTTPException:
        raise
    except Exception as exc:  # the program failed on the device
        return _error(500, type(exc).__name__, str(exc).strip().splitlines()[0])
    if accept == NPY:
        if len(flat) != 1:
            names = [spec["name"] for spec in model.outputs]
            return _error(406, "NotAcceptable", f"{len(flat)} outputs {names}: ask for {NPZ}")
        buffer = io.BytesIO()
        np.save(buffer, flat[0], allow_pickle=False)
        return Response(buffer.getvalue(), 200, content_type=NPY)
    if accept == NPZ:
        buffer = io.BytesIO()
        np.savez(buffer, **{spec["name"]: a for spec, a in zip(model.outputs, flat, strict=True)})
        return Response(buffer.getvalue(), 200, content_type=NPZ)
    return _json(200, {"outputs": _as_lists(model.structure(flat))})


def _accepted(request: Request) -> str | None:
    if not request.accept_mimetypes:
        return JSON
    return request.accept_mimetypes.best_match([JSON, NPY, NPZ])


def _inputs(request: Request) -> tuple[list[Any], dict[str, Any]]:
    kind = request.mimetype
    body = request.get_data(cache=False)
    if kind == JSON:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"the body is not valid JSON: {exc}") from exc
        inputs = payload.get("inputs") if isinstance(payload, dict) else None
        if isinstance(inputs, list):
            return inputs, {}
        if isinstance(inputs, dict):
            return [], inputs
        raise InputError('expected a JSON object {"inputs": [...]} or {"inputs": {name: ...}}')
    if kind == NPY:
        return [_load_npy(body)], {}
    if kind == NPZ:
        try:
            with np.load(io.BytesIO(body), allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except Exception as exc:  # numpy raises several types for a damaged archive
            raise InputError(f"the body is not a readable .npz archive: {exc}") from exc
        positional = [f"arr_{i}" for i in range(len(arrays))]
        if sorted(arrays) == sorted(positional):
            return [arrays[n] for n in positional], {}
        return [], arrays
    raise _Unsupported(kind)


def _load_npy(body: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError or OSError for a bad header
        raise InputError(f"the body is not a readable .npy array: {exc}") from exc


class _Unsupported(HTTPException):
    code = 415

    def __init__(self, kind: str) -> None:
        super().__init__(
            f"Content-Type {kind or '(none)'} is not served: send {JSON}, {NPY} or {NPZ}"
        )


def _as_lists(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _as_lists(v) for k, v in value.items()}
    return [_as_lists(v) for v in value]


def _json(status: int, payload: Any) -> Response:
    return Response(json.dumps(payload), status, content_type=JSON)


def _error(status: int, kind: str, message: str) -> Response:
    return _json(status, {"error": {"type": kind, "message": message}})

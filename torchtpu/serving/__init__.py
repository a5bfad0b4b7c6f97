"""Run a model exported by ``torchtpu.export`` without PyTorch: JAX, numpy,
safetensors and (for HTTP) werkzeug are all it needs.

    predict = torchtpu.serving.load("model.tpu")
    outputs = predict(np.zeros((2, 16), np.int64))   # numpy in, numpy out

    torchtpu serve model.tpu --port 8000           # the same over HTTP

See ``torchtpu.serving.http`` for the HTTP API and ``torchtpu.serving.format``
for the artifact's files.
"""

from __future__ import annotations

from typing import Any

from torchtpu.serving.model import ArtifactError, InputError, ServedModel, load


def serve(
    path: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_content_length: int | None = None,
    ready: Any = None,
) -> None:
    """Load the artifact at ``path`` and answer HTTP requests on ``host:port`` until
    interrupted. ``ready(server)`` is called once the socket is bound.

    Example::

        torchtpu.serving.serve("model.tpu", port=8000)
    """
    from torchtpu.serving.http import DEFAULT_MAX_CONTENT_LENGTH, make_server

    model = load(path)
    limit = DEFAULT_MAX_CONTENT_LENGTH if max_content_length is None else max_content_length
    server = make_server(model, host, port, max_content_length=limit)
    if ready is not None:
        ready(server)
    try:
        server.serve_forever()
    finally:
        server.server_close()


__all__ = ["ArtifactError", "InputError", "ServedModel", "load", "serve"]

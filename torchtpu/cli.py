"""The ``torchtpu`` command.

torchtpu info                         # versions, devices, cache directory
torchtpu examine module:factory       # which ops of a model lower or fall back
torchtpu run script.py [args]         # run a CUDA script unchanged on the tpu device
torchtpu serve model.tpu --port 8000  # answer HTTP requests with an exported model
"""

from __future__ import annotations

import argparse
import sys


def _info(_: argparse.Namespace) -> int:
    import jax
    import torch

    import torchtpu
    from torchtpu.runtime import default_device

    opts = torchtpu.options()
    print(f"torchtpu {torchtpu.__version__}  torch {torch.__version__}  jax {jax.__version__}")
    print(f"devices: {', '.join(str(d) for d in jax.devices())}")
    print(f"torchtpu runs on: {default_device()}")
    print(f"persistent cache: {opts.cache_dir or '(disabled)'}")
    print(f"strict: {opts.strict}  debug: {opts.debug}")
    return 0


def _run(argv: list[str]) -> int:
    """Run ``script.py [args]`` as ``__main__`` with CUDA mapped to the tpu device."""
    import runpy
    from pathlib import Path

    import torchtpu

    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: torchtpu run script.py [args ...]\n\n" + torchtpu.patch_cuda.__doc__)
        return 0 if argv else 2
    torchtpu.patch_cuda()
    sys.argv = list(argv)
    sys.path.insert(0, str(Path(argv[0]).resolve().parent))
    runpy.run_path(argv[0], run_name="__main__")
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Serve an artifact of ``torchtpu.export`` over HTTP; needs no torch."""
    from torchtpu.serving import ArtifactError, serve

    def ready(server: object) -> None:
        host, port = server.server_address[:2]
        print(
            f"torchtpu: serving {args.path} on http://{host}:{port} "
            "(POST /v1/predict, GET /v1/metadata)",
            flush=True,
        )

    try:
        serve(
            args.path,
            args.host,
            args.port,
            max_content_length=args.max_content_length,
            ready=ready,
        )
    except ArtifactError as exc:
        print(f"torchtpu serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``torchtpu`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "examine":
        from torchtpu.examine import main as examine_main

        return int(examine_main(argv[1:]) or 0)
    if argv and argv[0] == "run":
        return _run(argv[1:])
    parser = argparse.ArgumentParser(prog="torchtpu", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices and settings").set_defaults(fn=_info)
    sub.add_parser("examine", help="list which ops of a model lower, fall back or fail")
    sub.add_parser("run", help="run a CUDA script unchanged on the tpu device")
    serve = sub.add_parser("serve", help="answer HTTP requests with an exported model")
    serve.add_argument("path", help="the directory torchtpu.export(...).save(path) wrote")
    serve.add_argument("--port", type=int, default=8000, help="0: any free port")
    serve.add_argument("--host", default="127.0.0.1", help="the address to bind (localhost)")
    serve.add_argument(
        "--max-content-length",
        type=int,
        default=None,
        help="largest request body in bytes (default 64 MiB); larger ones get 413",
    )
    serve.set_defaults(fn=_serve)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())

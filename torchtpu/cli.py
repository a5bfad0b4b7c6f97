"""The ``torchtpu`` command.

torchtpu info                         # versions, devices, cache directory
torchtpu examine module:factory       # which ops of a model lower or fall back
torchtpu run script.py [args]         # run a CUDA script unchanged on the tpu device
torchtpu serve model.tpu --port 8000  # answer HTTP requests with an exported model
torchtpu plan script.py [--chips ...]  # time, cost and energy of the script's step per chip
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
    # Under torchrun, join the job before the script makes a tensor: JAX's
    # distributed runtime must start before its backend does.
    from torchtpu.shard.launch import initialize_from_env

    initialize_from_env()
    torchtpu.patch_cuda()
    sys.argv = list(argv)
    sys.path.insert(0, str(Path(argv[0]).resolve().parent))
    runpy.run_path(argv[0], run_name="__main__")
    return 0


def _plan(argv: list[str]) -> int:
    """Run ``script.py`` until its step has run ``--steps`` times, stop it there, and
    print the plan of that step (see :mod:`torchtpu.plan.script`): its first
    ``compile_step``, or else the graphs it compiles with ``torch.compile``.
    """
    from pathlib import Path

    import torchtpu.plan
    from torchtpu.plan.script import capture_script

    p = argparse.ArgumentParser(
        prog="torchtpu plan",
        description="Run a script until its training step has run (a compile_step, or its "
        "torch.compile(backend='tpu') graphs), then print the step's plan per chip. Planner "
        "options go before the script; what follows it is the script's.",
    )
    p.add_argument("script", help="a Python script that trains with compile_step or torch.compile")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    p.add_argument("--chips", default=None, help="comma-separated catalog keys and 'local'")
    p.add_argument("--n-chips", type=int, default=1, help="chips per job (data parallel)")
    p.add_argument("--strategy", default="auto", choices=["auto", *torchtpu.plan.STRATEGIES])
    p.add_argument("--tokens", type=float, default=None, help="the job's total tokens")
    p.add_argument("--steps", type=int, default=1, help="steps to run before planning")
    p.add_argument("--markdown", default=None, help="also write the table to this .md file")
    p.add_argument("--chart", default=None, help="also draw tokens/s and $/1M tokens to this PNG")
    args = p.parse_args(argv)

    captured = capture_script(args.script, args.args, args.steps)
    try:
        plannable = captured.plannable()
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    chips = args.chips.split(",") if args.chips else None
    result = torchtpu.plan(
        plannable, chips=chips, n_chips=args.n_chips, strategy=args.strategy, tokens=args.tokens
    )
    print(result)
    if args.markdown:
        Path(args.markdown).write_text(result.markdown() + "\n")
        print(f"torchtpu plan: wrote {args.markdown}")
    if args.chart:
        result.chart(args.chart)
        print(f"torchtpu plan: wrote {args.chart}")
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
    if argv and argv[0] == "plan":
        return _plan(argv[1:])
    parser = argparse.ArgumentParser(prog="torchtpu", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices and settings").set_defaults(fn=_info)
    sub.add_parser("examine", help="list which ops of a model lower, fall back or fail")
    sub.add_parser("run", help="run a CUDA script unchanged on the tpu device")
    sub.add_parser("plan", help="time, cost and energy of a script's training step per chip")
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

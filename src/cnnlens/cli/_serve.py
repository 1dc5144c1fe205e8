"""Command ``serve``: the interactive explorer in the browser (needs the ``serve`` extra)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import InputError
from ._common import add_model_args, open_model


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="interactive explorer in the browser: explain, compare methods, look inside",
        description=(
            "Start a local web app over one model: choose or upload an image, explain any "
            "class with any method and layer, look at activations, weights, feature "
            "visualizations and (with --index) dataset patches and neighbours. Every view "
            "is also JSON (GET /api lists the routes). Stop it with Ctrl-C."
        ),
        epilog="examples:\n  cnnlens serve                      # then open http://127.0.0.1:8000/\n"
        "  cnnlens serve --port 8080\n"
        "  cnnlens serve --model fashion_cnn --index fm_store   # store from `cnnlens index`",
    )
    add_model_args(p)
    p.add_argument(
        "--index",
        default=None,
        metavar="STORE",
        help="a feature store folder (cnnlens index) for dataset patches and neighbours",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; the app has no login)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve import create_app
    except ImportError as exc:
        raise InputError(
            f"cnnlens serve needs the serve extra ({exc.name} is missing): "
            "pip install 'cnnlens[serve]'"
        ) from None
    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port} is not a port number (1-65535)")
    model = open_model(args)
    app = create_app(model, index=args.index)
    print(f"cnnlens: listing the layers of {model.name} and their receptive fields ...")
    app.state.explorer.layer_infos()  # once, before the first page asks for it
    print(f"cnnlens explorer for {model.name} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0

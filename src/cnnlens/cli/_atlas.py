"""Command ``atlas``: a static site of what each channel of chosen layers has learned."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._atlas import build_atlas
from ..dataset._sources import open_dataset
from ..errors import InputError
from ..render._atlas import atlas_pages
from ._common import (
    add_count,
    add_dataset,
    add_model_args,
    add_output,
    comma_names,
    open_model,
    wrote,
)
from ._dataset import add_engine_args, engine_options


def register(sub: Any) -> None:
    p = sub.add_parser(
        "atlas",
        help="static site: per layer and channel, feature visualization and top patches",
        description="Write a static site (open index.html) showing, for the first channels "
        "of each chosen layer, a feature visualization and the dataset patches that excite "
        "the channel most, plus a feature map of the dataset.",
        epilog="example:\n  cnnlens atlas fashion-mnist:test --model fashion_cnn "
        "--layers features.relu2,features.relu3 -o atlas/",
    )
    add_model_args(p)
    add_dataset(p)
    p.add_argument("--layers", required=True, help="comma-separated layer names")
    add_count(p, "--channels", default=8, help="the first N channels of each layer (default 8)")
    add_count(p, "-k", default=6, help="top patches per channel (default 6)")
    add_count(p, "--steps", default=96, help="feature-visualization steps (default 96)")
    add_count(p, "--sample", default=600, help="dataset items used (default: the first 600)")
    add_output(p, "folder for the site", kind="folder")
    add_engine_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    layers = comma_names([args.layers])
    if not layers:
        raise InputError("--layers names no layer")
    model = open_model(args)
    dataset = open_dataset(args.dataset)
    atlas = build_atlas(
        model,
        dataset,
        layers,
        channels=args.channels,
        k=args.k,
        steps=args.steps,
        sample=args.sample,
        **engine_options(args, model),
    )
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in atlas_pages(atlas).items():
        (out / name).write_text(text, encoding="utf-8")
    wrote((out / "index.html").resolve())
    return 0

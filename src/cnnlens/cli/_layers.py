"""Command ``layers``: every submodule with its type, output shape, parameter count and,
on request, its receptive field."""

from __future__ import annotations

import argparse
from typing import Any

from ..layers import LayerInfo, layers
from ._common import add_model_args, open_model, positive_int

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "layers",
        help="list a model's layers (names for --layer, output shapes, receptive fields)",
        description="List every submodule of the model in definition order: dotted name "
        "(what --layer takes), type, output shape for one image, number of parameters, "
        "and with --receptive-fields the receptive field size and stride in input pixels.",
        epilog="examples:\n  cnnlens layers -r\n  cnnlens layers --model resnet18 --random-weights --size 160 160",
    )
    add_model_args(p)
    p.add_argument(
        "-r",
        "--receptive-fields",
        action="store_true",
        help="also compute each layer's receptive field (size and stride, in pixels)",
    )
    p.add_argument(
        "--size",
        type=positive_int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="input size (default: the model's)",
    )
    p.set_defaults(run=run_layers)


def _shape(info: LayerInfo) -> str:
    return "-" if info.output_shape is None else "x".join(str(d) for d in info.output_shape)


def _pair(values: tuple[int, int]) -> str:
    return str(values[0]) if values[0] == values[1] else f"{values[0]}x{values[1]}"


def format_table(infos: list[LayerInfo], *, receptive_fields: bool) -> str:
    """The listing as aligned text columns."""
    header = ["name", "type", "output", "params"]
    if receptive_fields:
        header += ["rf size", "rf stride"]
    rows = [header]
    for info in infos:
        row = [info.name, info.type, _shape(info), f"{info.parameters:,}"]
        if receptive_fields:
            rf = info.receptive_field
            row += ["-", "-"] if rf is None else [_pair(rf.size), _pair(rf.stride)]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {2, 3, 4, 5}
    lines = []
    for r in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def run_layers(args: argparse.Namespace) -> int:
    model = open_model(args)
    size = tuple(args.size) if args.size is not None else None
    infos = layers(model, size, receptive_fields=args.receptive_fields)  # type: ignore[arg-type]
    print(f"{model.name}: input {'x'.join(map(str, size or model.input_size))}")
    print(format_table(infos, receptive_fields=args.receptive_fields))
    return 0

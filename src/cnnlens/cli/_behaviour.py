"""Commands ``filters``, ``activations`` and ``factorize``."""

from __future__ import annotations

import argparse
from typing import Any

import torch
from PIL import Image

from .._modules import layer_name, resolve_layer
from ..behaviour import activations, factorize, filters
from ..behaviour._inspect import check_channels, first_convolution, mid_feature_layer, top_channels
from ..errors import InputError
from ..render import add_caption, grid, save_picture
from ..render._behaviour import (
    activation_grid,
    factor_figure,
    filter_tiles,
    rgb_filter_tiles,
    unit_overlays,
)
from ..render._images import colorbar_image, stack
from ._common import add_count, add_image, add_model_args, add_output, open_image, open_model, wrote


def parse_channels(text: str | None) -> list[int] | None:
    """``"3,17"`` or ``"0-15"`` or a mix, to channel ids."""
    if text is None:
        return None
    channels: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-", 1)
                channels.extend(range(int(lo), int(hi) + 1))
            elif part:
                channels.append(int(part))
    except ValueError:
        raise InputError(f"--channels {text!r}: expected ids like 3,17 or 0-15") from None
    if not channels:
        raise InputError(f"--channels {text!r} names no channel")
    return channels


def register(sub: Any) -> None:
    p = sub.add_parser(
        "filters",
        help="show convolution filter weights",
        description="Draw the weights of a convolution: the first layer's filters as RGB "
        "tiles; for deeper layers one filter's slices per input channel (--filter) or the "
        "filters most tied to one input channel (--input-channel).",
        epilog="examples:\n  cnnlens filters -o filters.png\n"
        "  cnnlens filters --model fashion_cnn --layer features.conv2 --filter 3 -o f3.png",
    )
    add_model_args(p)
    p.add_argument("--layer", help="a convolution's name (default: the first convolution)")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--filter", type=int, help="deeper layers: show this filter's per-input-channel slices"
    )
    group.add_argument(
        "--input-channel",
        type=int,
        help="deeper layers: the filters most aligned with this input channel",
    )
    add_count(p, "--top", default=64, help="at most N tiles (default 64)")
    add_output(p, kind="picture")
    p.set_defaults(run=run_filters)

    p = sub.add_parser(
        "activations",
        help="feature maps of a layer for an image",
        description="Draw a layer's feature maps for IMAGE: the most active channels as a "
        "grid on one shared colour scale, and a few units overlaid on the picture.",
        epilog="examples:\n  cnnlens activations cat -o act.png\n"
        "  cnnlens activations coffee --layer _blocks.10 --channels 3,17 -o units.png",
    )
    add_model_args(p)
    add_image(p)
    p.add_argument("--layer", help="layer name (default: a mid-to-high layer)")
    p.add_argument(
        "--channels", help="units to overlay on the image, e.g. 3,17 (default: the 4 most active)"
    )
    add_count(p, "--top", default=12, help="grid of the N most active channels (default 12)")
    p.add_argument(
        "--by",
        choices=("mean", "max"),
        default="mean",
        help="rank channels by their mean or their peak activation (default mean)",
    )
    add_output(p, kind="picture")
    p.set_defaults(run=run_activations)

    p = sub.add_parser(
        "factorize",
        help="the factorization lens: NMF of a layer's activations",
        description="Factorize a layer's activations over the images into k non-negative "
        "factors (NMF, k set by -k) and colour each image by the factor that dominates each position; the "
        "legend lists each factor's strongest channels.",
        epilog="example:\n  cnnlens factorize cat coffee -k 4 -o factors.png",
    )
    add_model_args(p)
    add_image(p, nargs="+")
    p.add_argument("--layer", help="layer name (default: a mid-to-high layer)")
    add_count(p, "-k", default=6, help="number of factors (default 6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the NMF initialization (default 0)")
    add_output(p, kind="picture")
    p.set_defaults(run=run_factorize)


def run_filters(args: argparse.Namespace) -> int:
    model = open_model(args)
    module = model.module
    conv = first_convolution(module) if args.layer is None else resolve_layer(module, args.layer)
    weights = filters(module, conv)
    name = layer_name(module, conv)
    out_ch, in_per_group = weights.shape[:2]
    groups = int(getattr(conv, "groups", 1))
    limit = max(args.top, 1)
    if in_per_group == 3 and groups == 1:
        tiles = rgb_filter_tiles(weights[:limit])
        note = f"{name}: {out_ch} filters as RGB, grey = 0"
    elif in_per_group == 1:
        tiles = filter_tiles(weights[:limit, 0])
        note = f"{name}: depthwise, filter o sees only input channel {'o' if groups == out_ch else 'o*in/out'}"
    elif args.input_channel is not None:
        in_total = in_per_group * groups
        if not 0 <= args.input_channel < in_total:
            raise InputError(
                f"--input-channel {args.input_channel} out of range (0-{in_total - 1})"
            )
        group, local = divmod(args.input_channel, in_per_group)
        per_group = out_ch // groups
        members = torch.arange(group * per_group, (group + 1) * per_group)
        strength = weights[members, local].flatten(1).norm(dim=1)
        order = members[strength.argsort(descending=True)][:limit]
        tiles = filter_tiles(weights[order, local])
        note = f"{name}: filters most tied to input channel {args.input_channel}: {order.tolist()[:12]}"
    else:
        index = 0 if args.filter is None else args.filter
        if not 0 <= index < out_ch:
            raise InputError(f"--filter {index} out of range (0-{out_ch - 1})")
        tiles = filter_tiles(weights[index, :limit])
        note = f"{name}: filter {index}, one tile per input channel" + (
            f" of its group ({groups} groups)" if groups > 1 else ""
        )
    picture = add_caption(grid(tiles, columns=min(len(tiles), 16), pad=2), note)
    wrote(save_picture(picture, args.output))
    return 0


def _images_batch(model: Any, specs: list[str]) -> tuple[list[Image.Image], torch.Tensor]:
    images = [open_image(s) for s in specs]
    inputs = model.preprocess(images)
    return [model.deprocess(inputs[i : i + 1]) for i in range(len(images))], inputs


def run_activations(args: argparse.Namespace) -> int:
    model = open_model(args)
    seen, inputs = _images_batch(model, [args.image])
    layer = (
        mid_feature_layer(model.module, inputs)
        if args.layer is None
        else resolve_layer(model.module, args.layer)
    )
    maps = activations(model, inputs, layer)[0]
    values, ids = top_channels(maps[None], args.top, by=args.by)
    chosen = parse_channels(args.channels)
    if chosen is not None:
        check_channels(chosen, maps.shape[0])
    shown = chosen if chosen is not None else ids[0, :4].tolist()
    name = layer_name(model.module, layer)
    top = add_caption(
        activation_grid(maps, ids[0].tolist(), values[0].tolist()),
        f"{name}: top {ids.shape[1]} channels by {args.by} activation (label: channel · {args.by})",
    )
    units = grid(unit_overlays(seen[0], maps, shown), columns=len(shown))
    scale = colorbar_image(
        "jet", 0.0, 1.0, min(units.width, 480), "activation / the unit's max (opacity follows it)"
    )
    picture = stack([top, units, scale], pad=8)
    wrote(save_picture(picture, args.output))
    return 0


def run_factorize(args: argparse.Namespace) -> int:
    model = open_model(args)
    seen, inputs = _images_batch(model, args.images)
    layer = (
        mid_feature_layer(model.module, inputs)
        if args.layer is None
        else resolve_layer(model.module, args.layer)
    )
    result = factorize(model, inputs, layer, args.k, seed=args.seed)
    note = f"{layer_name(model.module, layer)}: {args.k} NMF factors"
    if result.clipped_negative:
        note += " (positive part of the activations)"
    wrote(save_picture(factor_figure(seen, result, note), args.output))
    return 0

"""Command ``explain``: one picture explained by one or several methods, drawn as overlays
(and, for signed methods, diverging maps) side by side.

Generic over methods: each method gets only the options its ``MethodSpec`` accepts, and
``--layer`` only if it works at a layer, so every registered method works through it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from .._progress import progress
from ..attribution.api import Explanation, MethodSpec, explain, method_spec
from ..errors import InputError
from ..render import diverging, grid, overlay, save_picture, upsample
from ..render._images import colorbar_image, signed_limit, stack
from ._common import (
    Output,
    add_batch_size,
    add_count,
    add_image,
    add_methods,
    add_model_args,
    add_output,
    method_names,
    open_image,
    open_model,
    parse_target,
    wrote,
)

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "explain",
        help="explain a model's decision on an image (saliency, Grad-CAM, LRP, ...)",
        description="Explain the model's score for a class on IMAGE with one or several "
        "methods; writes the overlays side by side (signed methods also as a diverging "
        "map: red positive, blue negative). With several methods a progress bar counts "
        "them on stderr.",
        epilog="examples:\n"
        "  cnnlens explain cat -m gradcam -o cat_gradcam.png\n"
        "  cnnlens explain cat -m saliency,occlusion,lrp --target tabby -o maps.png\n"
        "  cnnlens explain cat -m occlusion --window 48 --stride 16 -o occ.png --raw occ.pt",
    )
    add_image(p)
    add_methods(p, required=True)
    p.add_argument(
        "--target",
        default=None,
        metavar="CLASS",
        help="class index or label to explain (default: the top predicted class)",
    )
    p.add_argument(
        "--layer", default=None, help="layer for the CAM methods (default: last feature map)"
    )
    add_model_args(p)
    add_output(p, kind="picture")
    p.add_argument(
        "--raw",
        type=Output("file"),
        default=None,
        metavar="FILE",
        help="also save the raw attributions, one tensor per method (torch.save, .pt)",
    )
    options = p.add_argument_group("method options (each goes to the methods that take it)")
    add_count(options, "--samples", default=None, help="smoothgrad: noisy copies")
    options.add_argument("--noise", type=float, help="smoothgrad: sigma / input range")
    options.add_argument("--seed", type=int, help="smoothgrad: noise seed")
    options.add_argument(
        "--squared", action="store_const", const=True, help="smoothgrad: mean squared gradient"
    )
    add_count(options, "--steps", default=None, help="integrated_gradients: path steps")
    options.add_argument(
        "--window", type=_size, metavar="N|HxW", help="occlusion: window size in pixels"
    )
    options.add_argument("--stride", type=_size, metavar="N|HxW", help="occlusion: stride")
    options.add_argument(
        "--baseline",
        type=_number_or_word,
        help="occlusion/integrated_gradients: fill value; deeplift: 'zeros'",
    )
    options.add_argument("--composite", help="lrp: epsilon_plus, epsilon_gamma_box, ...")
    add_batch_size(options, None, "rows per forward pass (occlusion, smoothgrad, ...)")
    options.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other method option (repeatable)",
    )
    p.set_defaults(run=run)


_OPTION_DESTS = (
    "samples",
    "noise",
    "seed",
    "squared",
    "steps",
    "window",
    "stride",
    "baseline",
    "composite",
    "batch_size",
)


def _size(text: str) -> int | tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")


def _number_or_word(text: str) -> float | int | str | bool:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)  # type: ignore[no-any-return]
        except ValueError:
            pass
    return text


def _options(args: argparse.Namespace) -> tuple[dict[str, object], dict[str, str]]:
    """The method options given on the command line, by name; and, for the messages, what
    the user typed (``--samples``, ``--option nosuch=3: nosuch``)."""
    given: dict[str, object] = {}
    typed: dict[str, str] = {}
    for name in _OPTION_DESTS:
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
            typed[name] = "--" + name.replace("_", "-")
    for item in args.option:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--option expects NAME=VALUE, got {item!r}")
        key = name.strip().replace("-", "_")
        given[key] = _number_or_word(value.strip())
        typed[key] = f"--option {item}: {name.strip()}"
    return given, typed


def _plan(
    methods: list[str], given: dict[str, object], typed: dict[str, str], layer: str | None
) -> list[tuple[str, MethodSpec, dict[str, object]]]:
    """Each method with the options it takes; an option that no method takes is an error."""
    plan = []
    for method in methods:
        spec = method_spec(method)
        plan.append((method, spec, {k: v for k, v in given.items() if k in spec.options}))
    for name in given:
        if not any(name in spec.options for _, spec, _ in plan):
            taken = sorted({option for _, spec, _ in plan for option in spec.options})
            one = len(methods) == 1
            listing = (
                f"{'its' if one else 'their'} options: {', '.join(taken)}"
                if taken
                else f"{'it takes' if one else 'they take'} no options"
            )
            raise InputError(f"{typed[name]} is not an option of {', '.join(methods)} ({listing})")
    if layer is not None and not any(spec.uses_layer for _, spec, _ in plan):
        raise InputError(f"--layer is not used by {', '.join(methods)} (only the CAM methods)")
    return plan


def _clip(heat: Tensor, quantile: float = 0.99) -> Tensor:
    """For display: scale so the 99th percentile is 1 (a few extreme pixels of a gradient
    map would otherwise leave the rest invisible, as Smilkov et al. 2017 note)."""
    top = float(torch.quantile(heat.flatten().float(), quantile))
    return (heat / top).clamp(max=1.0) if top > 0 else heat


def _signed_map(explanation: Explanation) -> Tensor:
    """The first item's attribution summed over channels, at input resolution."""
    values = explanation.attribution[0].detach().float().cpu()
    if values.dim() == 3:
        values = values.sum(dim=0)
    if tuple(values.shape) != explanation.input_size:
        values = upsample(values, explanation.input_size)
    return values


def run(args: argparse.Namespace) -> int:
    methods = method_names(args.method)
    plan = _plan(methods, *_options(args), args.layer)
    image = open_image(args.image)
    model = open_model(args)
    target = parse_target(model, args.target)
    inputs = model.preprocess(image)
    picture = model.deprocess(inputs)

    results: dict[str, Explanation] = {}
    # One method shows its own bar where it is slow; several get a bar over the methods.
    with progress(
        len(plan), "explain", enabled=None if len(plan) > 1 else False, unit="method"
    ) as bar:
        for method, spec, options in plan:
            bar.describe(method)
            layer = args.layer if spec.uses_layer else None
            results[method] = explain(model, inputs, method, target=target, layer=layer, **options)
            bar.advance()

    first = next(iter(results.values()))
    label = "custom score" if first.targets is None else model.label(int(first.targets[0]))
    columns: list[tuple[str, Image.Image, Image.Image | None]] = []
    width = picture.width
    for method, explanation in results.items():
        heat = stack([
            overlay(picture, _clip(explanation.heatmap()[0])),
            colorbar_image("jet", 0.0, 1.0, width, "share of the map's 99th percentile"),
        ])  # fmt: skip
        signed = None
        if explanation.signed:
            values = _signed_map(explanation)
            limit = signed_limit(values)
            signed = stack([
                diverging(values, limit=limit),
                colorbar_image("bwr", -limit, limit, width, "attribution, summed over channels"),
            ])  # fmt: skip
        layer_note = f" @ {explanation.layer}" if explanation.layer else ""
        columns.append((f"{method}{layer_note}", heat, signed))
    figure = _layout(picture, f"{Path(args.image).name}: {label}", columns)
    written = [save_picture(figure, args.output)]
    if args.raw:
        raw = Path(args.raw)
        raw.parent.mkdir(parents=True, exist_ok=True)  # checked writable at parse time
        torch.save({m: e.attribution.detach().cpu() for m, e in results.items()}, raw)
        written.append(raw)
    for path in written:
        wrote(path)
    return 0


def _layout(
    picture: Image.Image, title: str, columns: list[tuple[str, Image.Image, Image.Image | None]]
) -> Image.Image:
    """The input first, then each method: one method in a single row (overlay, signed map);
    several side by side, one column each, overlays above and signed maps below."""
    if len(columns) == 1:
        name, heat, signed = columns[0]
        images = [picture, heat] + ([signed] if signed is not None else [])
        names = [title, name] + ([f"{name} (signed)"] if signed is not None else [])
        return grid(images, captions=names)
    images = [picture] + [heat for _, heat, _ in columns]
    names = [title] + [name for name, _, _ in columns]
    if any(signed is not None for _, _, signed in columns):
        blank = Image.new("RGB", picture.size, "white")
        images += [blank] + [blank if signed is None else signed for _, _, signed in columns]
        names += [""] + [
            "" if signed is None else f"{name} (signed)" for name, _, signed in columns
        ]
    return grid(images, columns=len(columns) + 1, captions=names)

"""Command ``visualize``: class and unit visualization by regularized gradient ascent."""

from __future__ import annotations

import argparse
from typing import Any

from .._modules import resolve_layer
from ..behaviour.visualize import FAST_STEPS, visualize
from ..errors import InputError
from ..models import LoadedModel
from ..render import grid, save_picture, tensor_to_image
from ._common import (
    add_count,
    add_model_args,
    add_output,
    open_model,
    parse_target,
    positive_int,
    wrote,
)


def parse_objective(model: LoadedModel, text: str) -> tuple[int | str, str]:
    """``--target`` text to an objective and its caption: ``layer:channel`` when the part
    before the last colon names a layer, else a class index or label."""
    layer, sep, index = text.rpartition(":")
    if sep and layer and index.strip().isdigit():
        if layer in dict(model.module.named_modules()):
            return f"{layer}:{int(index)}", f"{layer}:{int(index)}"
        try:
            klass = parse_target(model, text)
        except InputError:
            resolve_layer(model.module, layer)  # raises with the closest layer names
            raise
    else:
        klass = parse_target(model, text)
    assert klass is not None
    return klass, f"{klass}: {model.label(klass)}"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "visualize",
        help="images that maximize a class score or a unit (regularized gradient ascent)",
        description="Make the picture the model finds most typical of a class, or that "
        "excites a unit most, by gradient ascent on the input. The default (the fast "
        f"recipe, {FAST_STEPS} steps) takes well under a minute for one class on two CPU "
        "cores; --recipe lucid --steps 256 gives a sharper picture in several times longer. "
        "A progress bar on stderr shows the steps and the current score.",
        epilog="examples:\n"
        "  cnnlens visualize --target tabby -o tabby.png\n"
        "  cnnlens visualize --target flamingo --target 323 --target _blocks.6:30 -o vis.png\n"
        "  cnnlens visualize --target 130 --recipe lucid --steps 256 --size 320 -o big.png\n"
        "  cnnlens visualize --target 130 --plain-l2 0.0001 --steps 100 -o plain.png",
    )
    add_model_args(p)
    p.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="CLASS_INDEX|LABEL|LAYER:CHANNEL",
        help="what to maximize; repeat for several images in one batch (a labelled grid)",
    )
    add_count(
        p,
        "--steps",
        default=None,
        help=f"optimization steps (default {FAST_STEPS}; 256 for --recipe lucid and --plain-l2)",
    )
    p.add_argument(
        "--size",
        type=positive_int,
        default=None,
        metavar="PIXELS",
        help="side of the square picture (default: the model's input size)",
    )
    p.add_argument(
        "--recipe",
        choices=("fast", "lucid"),
        default="fast",
        help="fast (default): coarse views first, cosine learning rate; lucid: every step "
        "at full size, as in Olah et al. 2017",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--plain-l2",
        type=float,
        metavar="LAMBDA",
        default=None,
        help="Simonyan et al. 2013 instead of the default recipe: pixels from a blank "
        "image, maximize S_c(I) - LAMBDA*||I||^2, no other regularizer",
    )
    p.add_argument(
        "--diversity",
        type=float,
        default=0.0,
        help="weight of the diversity term between the images of the batch (default 0)",
    )
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    add_count(p, "--columns", default=None, help="grid columns (default: up to 8)")
    add_output(p, kind="picture")
    p.set_defaults(run=run_visualize)


def run_visualize(args: argparse.Namespace) -> int:
    model = open_model(args)
    parsed = [parse_objective(model, text) for text in args.target]
    options: dict[str, Any] = {"diversity": args.diversity, "recipe": args.recipe}
    if args.plain_l2 is not None:
        options.update(recipe="simonyan", l2=args.plain_l2)
    if args.lr is not None:
        options["lr"] = args.lr
    if args.size is not None:
        options["size"] = args.size
    steps = args.steps or (FAST_STEPS if options["recipe"] == "fast" else 256)
    images = visualize(model, [o for o, _ in parsed], steps=steps, seed=args.seed, **options)
    pictures = [tensor_to_image(image) for image in images]
    if len(pictures) == 1:
        picture = pictures[0]
    else:
        picture = grid(pictures, columns=args.columns, captions=[c for _, c in parsed])
    wrote(save_picture(picture, args.output))
    return 0

"""What each report panel says, written from the options the method actually ran with
(never from its defaults), so a caption cannot drift from the computation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["MethodText", "baseline_words", "count", "layer_words", "method_text", "pair"]

TITLES: dict[str, tuple[str, str]] = {
    "occlusion": ("Occlusion", "Zeiler & Fergus 2014"),
    "saliency": ("Saliency (gradient)", "Simonyan et al. 2013"),
    "smoothgrad": ("SmoothGrad", "Smilkov et al. 2017"),
    "deconvnet": ("Deconvnet", "Zeiler & Fergus 2014"),
    "guided_backprop": ("Guided backpropagation", "Springenberg et al. 2015"),
    "cam": ("CAM", "Zhou et al. 2016"),
    "gradcam": ("Grad-CAM", "Selvaraju et al. 2017"),
    "guided_gradcam": ("Guided Grad-CAM", "Selvaraju et al. 2017"),
    "deeplift": ("DeepLIFT (rescale rule)", "Shrikumar et al. 2017"),
    "lrp": ("LRP", "Bach et al. 2015; composites: Kohlbrenner et al. 2020"),
    "input_x_gradient": ("Input × gradient", "Shrikumar et al. 2016"),
    "integrated_gradients": ("Integrated gradients", "Sundararajan et al. 2017"),
    "gradcam_pp": ("Grad-CAM++", "Chattopadhay et al. 2018"),
    "layercam": ("LayerCAM", "Jiang et al. 2021"),
    "scorecam": ("Score-CAM", "Wang et al. 2020"),
}

WHAT: dict[str, str] = {
    "occlusion": "Slides a window over the image and records how much the class score drops when the window hides each place.",
    "saliency": "The gradient of the class score with respect to each pixel: where a small change moves the score most.",
    "smoothgrad": "The gradient averaged over noisy copies of the image, which averages out the gradient's speckle.",
    "deconvnet": "A backward pass that keeps only positive signals at each rectifier (ignoring the forward pass's signs): image patterns the units respond to, barely specific to the class.",
    "guided_backprop": "The gradient, masked at each rectifier by both the forward and the backward sign: sharp edges, weakly class-specific.",
    "cam": "The class's weights in the final linear layer applied to the last feature maps before global average pooling.",
    "gradcam": "The last feature maps weighted by the spatial mean of their gradients, summed and rectified: coarse class-discriminative regions.",
    "guided_gradcam": "Guided backpropagation multiplied pixel by pixel by the upsampled Grad-CAM: sharp and class-discriminative.",
    "deeplift": "Each pixel's contribution to the difference between the score of the image and the score of a reference (baseline) input, propagated with the rescale rule.",
    "lrp": "Layer-wise relevance propagation: the class score redistributed layer by layer down to the pixels; each layer passes on what it receives, less what its bias absorbs.",
}

COMPOSITES: dict[str, str] = {
    "epsilon_plus": "ε-rule on the dense layers, z⁺-rule on every convolution",
    "epsilon_plus_flat": "ε-rule on the dense layers, z⁺-rule on the convolutions, flat rule on the first layer",
    "epsilon_gamma_box": "ε-rule on the dense layers, γ-rule on the convolutions, zᴮ (box) rule on the first convolution",
    "epsilon_alpha2_beta1": "ε-rule on the dense layers, α2β1-rule on the convolutions",
}


@dataclass(frozen=True)
class MethodText:
    title: str
    reference: str
    what: str
    settings: str  # the options used, in words
    overlay: str  # what the left map shows
    signed: str  # what the right map shows


def pair(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"{value[0]}×{value[1]}"
    return f"{value}×{value}"


def colour_words(rgb: Sequence[int]) -> str:
    if not rgb:
        return "an unknown colour"
    spread = max(rgb) - min(rgb)
    mean = sum(rgb) / len(rgb)
    name = (
        "black"
        if mean < 30 and spread < 30
        else "white"
        if mean > 225 and spread < 30
        else "mid-grey"
        if 100 <= mean <= 155 and spread < 30
        else "grey"
        if spread < 30
        else "a tinted colour"
    )
    return f"{name}, RGB({', '.join(str(v) for v in rgb)})"


def baseline_words(baseline: Any, zero_colour: Sequence[int]) -> str:
    """A fill/baseline option as the model sees it."""
    if isinstance(baseline, str) and baseline == "zeros":
        baseline = 0.0
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        if float(baseline) == 0.0:
            return (
                "0 in the normalized input, i.e. the normalization mean — "
                f"{colour_words(zero_colour)} for this model"
            )
        return f"{float(baseline):g} in the normalized input (a constant image)"
    if isinstance(baseline, Tensor):
        return f"a given tensor of shape {tuple(baseline.shape)}"
    return repr(baseline)


def layer_words(note: Any | None, name: str | None, *, with_name: bool = True) -> str:
    """``name — type, stage s of S, C channels at h×w (1/stride of the input), receptive field``."""
    if name is None:
        return ""
    if note is None:
        return name if with_name else ""
    if note.receptive_field is not None:
        rf = f"receptive field {note.receptive_field[0]}×{note.receptive_field[1]} px"
    elif note.receptive_field_error:
        rf = f"receptive field not computed ({note.receptive_field_error})"
    else:
        rf = "no local receptive field (each position depends on the whole image)"
    return (f"{name} — " if with_name else "") + (
        f"{note.type}, stage {note.stage} of {note.stages}, {note.channels} channels "
        f"at {note.size[0]}×{note.size[1]} (1/{note.stride} of the input side), {rf}"
    )


def _others(options: Mapping[str, Any], known: set[str]) -> str:
    rest = [f"{k} = {v}" for k, v in options.items() if k not in known]
    return ("; other options: " + ", ".join(rest)) if rest else ""


def count(n: int, noun: str) -> str:
    """``n`` and ``noun`` in agreement: "1 image", "2 images"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _lrp_budget(
    target: str, total: float | None, score: float | None, absorbed: float | None
) -> str:
    """Where LRP's score went: the map sums to ``total`` (an absolute amount, in the score's
    units); the biases (the folded BatchNorm shifts among them) and the stabilizers absorbed
    ``absorbed`` = score − total, so a small total is not a bug."""
    if total is None:
        return "."
    if score is None:
        return f"; the map sums to {total:.3g}."
    text = f"; the map sums to {total:.3g}"
    if score != 0:
        text += f" — {100 * total / score:.3g}\u00a0% of the {target} score {score:.3g}"
    else:
        text += f"; the {target} score is 0"
    if absorbed is not None:
        # ``absorbed`` is score − total by construction; say "the other" only when it is.
        rest = abs(score - total - absorbed) <= 1e-3 * max(abs(score), abs(total), 1e-12)
        text += (
            f"; the layers' biases and stabilizers absorbed {'the other ' if rest else ''}"
            f"{absorbed:.3g} on the way down (common with BatchNorm folded into the "
            "convolutions, whose shifts become biases; see the cnnlens docs, docs/lrp.md)"
        )
    return text + "."


def method_text(
    method: str,
    options: Mapping[str, Any],
    *,
    target: str,
    zero_colour: Sequence[int],
    layer: str = "",
    total: float | None = None,
    score: float | None = None,
    absorbed: float | None = None,
) -> MethodText:
    """The panel's words for ``method`` run with ``options`` on class ``target``; ``total``
    is the map's sum, ``score`` and ``absorbed`` LRP's explained score and what its biases
    took."""
    title, reference = TITLES.get(method, (method, ""))
    what = WHAT.get(method, "")
    input_overlay = (
        "Left: the largest |value| over the colour channels, over a grey copy of the photo "
        "(opaque where high); the scale stops at the 99.5th percentile."
    )
    settings = "no options"
    signed = (
        "Right: the sum over the colour channels, red positive, blue negative, white zero "
        "(symmetric scale at the 99.5th percentile of |value|)."
    )
    overlay = input_overlay
    if method == "occlusion":
        window, stride = options.get("window"), options.get("stride")
        settings = (
            f"window {pair(window) if window is not None else 'default (a seventh of the side)'} px, "
            f"stride {pair(stride) if stride is not None else 'half the window'} px; the hidden pixels are set to "
            f"{baseline_words(options.get('baseline', 0.0), zero_colour)}; "
            f"score: the {options.get('score', 'logit')} of {target}"
            + _others(options, {"window", "stride", "baseline", "score", "batch_size", "progress"})
        )
        overlay = "Left: the score drop (its positive part) drawn over a grey copy of the photo: opaque where hiding the place lowers the score most."
        signed = (
            f"Right: the mean drop of the {target} {options.get('score', 'logit')} when each place is hidden: "
            "red = the score fell (evidence for the class), blue = it rose (evidence against)."
        )
    elif method == "smoothgrad":
        settings = (
            f"{options.get('samples', 16)} noisy copies, Gaussian noise σ = {options.get('noise', 0.15)} × the image's value range, "
            f"seed {options.get('seed', 0)}"
            + _others(options, {"samples", "noise", "seed", "progress"})
        )
        signed = f"Right: the mean gradient summed over colour channels: red = brightening the pixel raises the {target} score, blue = lowers it."
    elif method == "saliency":
        settings = "the plain gradient of the logit" + _others(options, {"progress"})
        signed = f"Right: the gradient summed over colour channels: red = brightening the pixel raises the {target} score, blue = lowers it."
    elif method in ("deconvnet", "guided_backprop", "guided_gradcam"):
        settings = (
            "Grad-CAM at " + layer if method == "guided_gradcam" and layer else "no options"
        ) + _others(options, {"progress"})
        signed = (
            "Right: the sum over colour channels, red positive, blue negative. The backward pass is "
            "modified at the rectifiers, so the sign is not the effect of brightening a pixel."
        )
    elif method == "deeplift":
        settings = (
            f"baseline: {baseline_words(options.get('baseline', 'zeros'), zero_colour)}"
            + _others(options, {"baseline", "progress"})
        )
        signed = (
            f"Right: contributions summed over colour channels: red = the pixel raises the {target} score "
            "above the baseline's, blue = lowers it"
            + (
                f"; all contributions sum to score(image) − score(baseline) = {total:.3g}."
                if total is not None
                else "."
            )
        )
    elif method == "lrp":
        composite = str(options.get("composite", "epsilon_plus"))
        settings = (
            f"composite {composite}: {COMPOSITES.get(composite, 'see the cnnlens docs, docs/lrp.md')}; BatchNorm folded into the "
            "preceding layer" + _others(options, {"composite"})
        )
        signed = (
            f"Right: relevance summed over colour channels: red supports {target}, blue speaks against it"
            + _lrp_budget(target, total, score, absorbed)
        )
    elif method in ("cam", "gradcam", "gradcam_pp", "layercam", "scorecam"):
        settings = f"layer {layer}" if layer else "the last feature layer"
        settings += _others(options, {"progress", "batch_size"})
        if method == "cam":
            overlay = "Left: CAM minus its minimum, upsampled to the image and drawn over a grey copy of the photo."
            signed = (
                "Right: Σ_k w_k A^k at the layer's own resolution (one square per map position), "
                "red positive, blue negative: the map averages to the class logit minus the bias."
            )
        else:
            overlay = (
                f"Left: {title} upsampled to the image and drawn over a grey copy of the photo."
            )
            signed = (
                "Right: the map at the layer's own resolution (one square per map position). It is "
                "non-negative by construction (a ReLU), so it has a one-sided scale."
            )
    return MethodText(title, reference, what, settings, overlay, signed)

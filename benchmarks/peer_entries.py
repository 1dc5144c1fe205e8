"""The peers' versions of each computation (captum, zennit, pytorch-grad-cam, torchcam),
as :class:`harness.Entry` objects. A peer that is not installed or has no such method gives
no entry; one that is installed but fails on the model is found out by the harness's first
round and reported with its error.

Every function takes a :class:`Setup` (model, batch, targets, layer names) and returns the
entries for one method; ``peers_for(method, setup)`` looks them up.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from harness import Entry

__all__ = ["Setup", "one_relu_per_call_site", "peers_for"]


@dataclass(frozen=True)
class Setup:
    """One model and batch as every row of a case sees it (parameters frozen)."""

    model: str
    module: nn.Module
    x: Tensor
    target: Tensor
    layer: str  # the default feature layer (Grad-CAM family)
    fc: str  # the classifier after global pooling (CAM)
    samples: int  # SmoothGrad samples, integrated-gradients steps
    rows: int  # rows per batched pass (SmoothGrad/IG copies, Score-CAM, occlusion)
    window: int
    stride: int

    @property
    def targets(self) -> list[int]:
        return [int(t) for t in self.target]

    @property
    def box(self) -> dict[str, float]:
        """z^B's bounds for every row: the input's range (zennit takes no per-item bounds)."""
        return {"low": float(self.x.min()), "high": float(self.x.max())}


def _have(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _leaf(x: Tensor) -> Tensor:
    return x.detach().clone().requires_grad_()


# ---- captum ---------------------------------------------------------------------------


def _captum(name: str, make: Callable[[], Callable[[], object]]) -> list[Entry]:
    return [Entry(f"captum {name}", make())] if _have("captum") else []


def _captum_gradient(s: Setup, cls_name: str, **options: Any) -> list[Entry]:
    def make() -> Callable[[], object]:
        import captum.attr

        cls = getattr(captum.attr, cls_name)
        return lambda: cls(s.module).attribute(_leaf(s.x), target=s.target, **options)

    return _captum(cls_name, make)


def _captum_smoothgrad(s: Setup) -> list[Entry]:
    def make() -> Callable[[], object]:
        from captum.attr import NoiseTunnel, Saliency

        per_eval = max(1, s.rows // len(s.x))
        tunnel = NoiseTunnel(Saliency(s.module))
        return lambda: tunnel.attribute(
            _leaf(s.x),
            nt_type="smoothgrad",
            nt_samples=s.samples,
            nt_samples_batch_size=per_eval,
            stdevs=0.15 * float(s.x.max() - s.x.min()),
            target=s.target,
            abs=False,
        )

    return _captum("NoiseTunnel(Saliency)", make)


def _captum_ig(s: Setup) -> list[Entry]:
    def make() -> Callable[[], object]:
        from captum.attr import IntegratedGradients

        ig = IntegratedGradients(s.module)
        return lambda: ig.attribute(
            _leaf(s.x),
            target=s.target,
            n_steps=s.samples,
            method="gausslegendre",
            internal_batch_size=s.rows,
        )

    return _captum("IntegratedGradients", make)


class _OwnReLUs(nn.Module):
    """A ResNet block with one ReLU module per call site (what captum's DeepLift needs)."""

    def __init__(self, block: BasicBlock | Bottleneck) -> None:
        super().__init__()
        self.block = block
        self.relus = nn.ModuleList(nn.ReLU() for _ in range(3))

    def forward(self, x: Tensor) -> Tensor:
        b: Any = self.block
        identity = x if b.downsample is None else b.downsample(x)
        out = self.relus[0](b.bn1(b.conv1(x)))
        if isinstance(b, Bottleneck):
            out = self.relus[1](b.bn2(b.conv2(out)))
            out = b.bn3(b.conv3(out))
        else:
            out = b.bn2(b.conv2(out))
        out = self.relus[2](out + identity)
        assert isinstance(out, Tensor)
        return out


def one_relu_per_call_site(model: ResNet) -> nn.Module:
    """A deep copy of a torchvision ResNet whose every ReLU call has its own module."""
    twin = copy.deepcopy(model)
    twin.relu = nn.ReLU()
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        blocks = getattr(twin, stage)
        for i, block in enumerate(blocks):
            if isinstance(block, (BasicBlock, Bottleneck)):
                blocks[i] = _OwnReLUs(block)
    return twin


def _captum_deeplift(s: Setup) -> list[Entry]:
    if not _have("captum"):
        return []
    from captum.attr import DeepLift

    def run(module: nn.Module) -> Callable[[], object]:
        zeros = torch.zeros_like(s.x)
        return lambda: DeepLift(module).attribute(_leaf(s.x), baselines=zeros, target=s.target)

    entries = [Entry("captum DeepLift", run(s.module))]
    if isinstance(s.module, ResNet):
        twin = one_relu_per_call_site(s.module)
        entries.append(Entry("captum DeepLift (one ReLU per call site)", run(twin)))
    return entries


def _captum_lrp(s: Setup) -> list[Entry]:
    def make() -> Callable[[], object]:
        from captum.attr import LRP

        twin = copy.deepcopy(s.module)  # captum sets attributes on the modules
        return lambda: LRP(twin).attribute(_leaf(s.x), target=s.target)

    return _captum("LRP (ε everywhere, deep copy)", make)


def _captum_occlusion(s: Setup) -> list[Entry]:
    def make() -> Callable[[], object]:
        from captum.attr import Occlusion

        c = s.x.shape[1]
        return lambda: Occlusion(s.module).attribute(
            s.x,
            sliding_window_shapes=(c, s.window, s.window),
            strides=(c, s.stride, s.stride),
            baselines=0.0,
            target=s.target,
            perturbations_per_eval=s.rows,
        )

    return _captum(f"Occlusion ({s.rows} per eval)", make)


def _captum_layer(s: Setup, cls_name: str, **options: Any) -> list[Entry]:
    def make() -> Callable[[], object]:
        import captum.attr

        cls = getattr(captum.attr, cls_name)
        layer = s.module.get_submodule(s.layer)
        return lambda: cls(s.module, layer).attribute(_leaf(s.x), target=s.target, **options)

    return _captum(cls_name, make)


# ---- zennit ---------------------------------------------------------------------------


def _zennit(s: Setup, name: str, composite: Callable[[], Any] | None, **kw: Any) -> list[Entry]:
    """zennit's ``Gradient`` attributor (or ``kw['attributor']``) with ``composite``."""
    if not _have("zennit"):
        return []
    import zennit.attribution as za

    attributor_cls = getattr(za, kw.pop("attributor", "Gradient"))

    def output_relevance(out: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(s.target, out.shape[1]) * out

    def run() -> object:
        comp = composite() if composite is not None else None
        with attributor_cls(model=s.module, composite=comp, **kw) as attributor:
            _, relevance = attributor(s.x, output_relevance)
        return relevance

    return [Entry(f"zennit {name}", run)]


def _canonizers(s: Setup) -> list[Any]:
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer

    return [ResNetCanonizer()] if isinstance(s.module, ResNet) else [SequentialMergeBatchNorm()]


def _zennit_composite(s: Setup, name: str, **options: Any) -> list[Entry]:
    if not _have("zennit"):
        return []
    import zennit.composites

    cls = getattr(zennit.composites, name)
    return _zennit(s, f"{name} + canonizer", lambda: cls(canonizers=_canonizers(s), **options))


def _zennit_lrp(s: Setup, composite: str) -> list[Entry]:
    names = {
        "epsilon_plus": ("EpsilonPlus", {}),
        "epsilon_plus_flat": ("EpsilonPlusFlat", {}),
        "epsilon_gamma_box": ("EpsilonGammaBox", s.box),
        "epsilon_alpha2_beta1": ("EpsilonAlpha2Beta1", {}),
    }
    if composite not in names:
        return []
    name, options = names[composite]
    return _zennit_composite(s, name, **options)


# ---- pytorch-grad-cam and torchcam -----------------------------------------------------


def _pgc(s: Setup, cls_name: str) -> list[Entry]:
    if not _have("pytorch_grad_cam"):
        return []
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pytorch_grad_cam, cls_name)
    layer = s.module.get_submodule(s.layer)

    def run() -> object:
        with cls(model=s.module, target_layers=[layer]) as cam:
            cam.batch_size = s.rows  # Score-CAM's masked copies per forward
            return cam(
                input_tensor=_leaf(s.x), targets=[ClassifierOutputTarget(t) for t in s.targets]
            )

    return [Entry(f"pytorch-grad-cam {cls_name}", run)]


def _torchcam(s: Setup, cls_name: str, **options: Any) -> list[Entry]:
    if not _have("torchcam"):
        return []
    import torchcam.methods

    cls = getattr(torchcam.methods, cls_name)
    gradient = cls_name not in ("CAM", "ScoreCAM", "SSCAM", "ISCAM")

    def run() -> object:
        x = _leaf(s.x) if gradient else s.x
        with cls(s.module, target_layer=s.layer, input_shape=tuple(s.x.shape[1:]), **options) as e:
            if gradient:
                scores = s.module(x)
            else:
                with torch.no_grad():
                    scores = s.module(x)
            return e(s.targets, scores, normalized=False)

    return [Entry(f"torchcam {cls_name}", run)]


# ---- the table ---------------------------------------------------------------------------


def peers_for(method: str, s: Setup, *, composite: str = "") -> list[Entry]:
    """The peers' entries for ``method`` (``composite``: the LRP composite)."""
    table: dict[str, Callable[[], list[Entry]]] = {
        # (captum's Saliency takes |gradient| unless told not to; ours is the gradient)
        "saliency": lambda: (
            _captum_gradient(s, "Saliency", abs=False) + _zennit(s, "Gradient", None)
        ),
        "input_x_gradient": lambda: _captum_gradient(s, "InputXGradient"),
        "deconvnet": lambda: (
            _captum_gradient(s, "Deconvolution") + _zennit_composite(s, "DeconvNet")
        ),
        "guided_backprop": lambda: (
            _captum_gradient(s, "GuidedBackprop") + _zennit_composite(s, "GuidedBackprop")
        ),
        "smoothgrad": lambda: (
            _captum_smoothgrad(s)
            + _zennit(
                s,
                "SmoothGrad",
                None,
                attributor="SmoothGrad",
                n_iter=s.samples,
                noise_level=0.15,
            )
        ),
        "integrated_gradients": lambda: (
            _captum_ig(s)
            + _zennit(
                s, "IntegratedGradients", None, attributor="IntegratedGradients", n_iter=s.samples
            )
        ),
        "deeplift": lambda: _captum_deeplift(s),
        "lrp": lambda: (
            _zennit_lrp(s, composite) + (_captum_lrp(s) if composite == "epsilon_plus" else [])
        ),
        "occlusion": lambda: _captum_occlusion(s),
        "cam": lambda: _torchcam(s, "CAM", fc_layer=s.fc),
        "gradcam": lambda: (
            _captum_layer(s, "LayerGradCam", relu_attributions=True)
            + _torchcam(s, "GradCAM")
            + _pgc(s, "GradCAM")
        ),
        "gradcam_pp": lambda: _torchcam(s, "GradCAMpp") + _pgc(s, "GradCAMPlusPlus"),
        "layercam": lambda: _torchcam(s, "LayerCAM") + _pgc(s, "LayerCAM"),
        "guided_gradcam": lambda: _guided_gradcam(s),
        "scorecam": lambda: _torchcam(s, "ScoreCAM", batch_size=s.rows) + _pgc(s, "ScoreCAM"),
    }
    make = table.get(method)
    return make() if make is not None else []


def _guided_gradcam(s: Setup) -> list[Entry]:
    def make() -> Callable[[], object]:
        from captum.attr import GuidedGradCam

        layer = s.module.get_submodule(s.layer)
        # bilinear, as cnnlens upsamples the map (captum's default is nearest)
        return lambda: GuidedGradCam(s.module, layer).attribute(
            _leaf(s.x), target=s.target, interpolate_mode="bilinear"
        )

    return _captum("GuidedGradCam", make)

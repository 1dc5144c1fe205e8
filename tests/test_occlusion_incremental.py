"""Incremental occlusion (attribution/_incremental.py) equals the plain batched occlusion.

Models run in float64 with non-degenerate random BatchNorm statistics, so the comparison
is tight (1e-9 of the score scale) and a wrong box, a missed padding value or a stale
cached value shows as an error many orders of magnitude larger.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import Tensor, nn

import cnnlens
from cnnlens.attribution import _incremental as inc
from cnnlens.attribution.occlusion import occlusion
from cnnlens.targets import resolve_target


def _non_degenerate(model: nn.Module, size: int, seed: int = 0) -> nn.Module:
    """BatchNorm statistics measured on random data (as training would leave them, so the
    signal neither vanishes nor explodes with depth and the map is far above rounding),
    then random affine parameters."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: the statistics of the batch below
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, size, size, generator=generator))
    for m in norms:
        m.momentum = 0.1
        m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
        m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
    return model.eval().double()


def _torchvision(name: str, size: int, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return _non_degenerate(getattr(torchvision.models, name)(weights=None, **kwargs), size)


def _both(model: nn.Module, x: Tensor, **options: object) -> tuple[Tensor, Tensor]:
    target = resolve_target(None, x.shape[0])
    plain = occlusion(model, x, target, incremental=False, **options)  # type: ignore[arg-type]
    fast = occlusion(model, x, target, incremental=True, **options)  # type: ignore[arg-type]
    return plain, fast


def _assert_equal(model: nn.Module, x: Tensor, plain: Tensor, fast: Tensor) -> None:
    with torch.no_grad():
        scale = model(x).abs().max()
    assert plain.abs().max() > 1e-6 * scale  # the map is not trivially zero
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-9 * float(scale))


# (model, input size, window, stride): windows at the borders (a flush last window when the
# stride does not land on the edge), windows smaller and larger than the stride, a window
# of one pixel and a rectangular one
CASES = [
    ("vgg11_bn", 32, 10, 11),
    ("resnet18", 48, (9, 14), (11, 6)),
    ("densenet121", 48, 12, 9),
    ("mobilenet_v2", 48, 1, 23),
    ("googlenet", 48, 16, 16),
    ("squeezenet1_0", 48, 8, 13),
    ("efficientnet_b0", 40, 12, 14),
]


@pytest.mark.parametrize(("name", "size", "window", "stride"), CASES)
def test_incremental_equals_plain_on_torchvision(
    name: str, size: int, window: int | tuple[int, int], stride: int | tuple[int, int]
) -> None:
    kwargs: dict[str, object] = (
        {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    )
    model = _torchvision(name, size, **kwargs)
    x = torch.randn(
        2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    plain, fast = _both(model, x, window=window, stride=stride, batch_size=16)
    _assert_equal(model, x, plain, fast)


def test_incremental_equals_plain_on_lite0_with_a_tensor_baseline() -> None:
    model = cnnlens.load_model("efficientnet_lite0").module.double()
    try:
        x = torch.randn(
            1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
        )
        baseline = torch.rand(3, 64, 64, dtype=torch.float64)
        plain, fast = _both(model, x, window=12, stride=10, baseline=baseline)
        _assert_equal(model, x, plain, fast)
    finally:
        model.float()


def test_traced_forward_equals_the_module() -> None:
    model = _torchvision("resnet18", 40)
    x = torch.randn(1, 3, 40, 40, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(inc.traced_forward(model, x), model(x), rtol=0, atol=0)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        if h.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            h = h.relu()
        return self.fc(h.mean(dim=(2, 3)))


def test_untraceable_model_uses_the_plain_path() -> None:
    model = _Untraceable().double().eval()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    target = resolve_target(0, 1)
    assert inc.plan(model, x, (4, 4)).fallback is not None
    auto = occlusion(model, x, target, window=4, stride=4)
    plain = occlusion(model, x, target, window=4, stride=4, incremental=False)
    torch.testing.assert_close(auto, plain, rtol=0, atol=0)
    with pytest.raises(cnnlens.InputError, match="cannot be traced"):
        occlusion(model, x, target, window=4, stride=4, incremental=True)


class _Unusual(nn.Module):
    """Operations the engine has no incremental rule for, in the middle of the network:
    a spatial roll (every position moves) and a gate computed from the whole map."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        h = h * torch.sigmoid(h.mean(dim=(2, 3), keepdim=True))  # a squeeze-excitation gate
        h = torch.roll(self.b(h), shifts=3, dims=3)
        return self.fc(h.amax(dim=(2, 3)))


def test_unknown_operations_densify_and_stay_exact() -> None:
    torch.manual_seed(3)
    model = _Unusual().double().eval()
    x = torch.randn(2, 3, 20, 20, dtype=torch.float64)
    plain, fast = _both(model, x, window=5, stride=3)
    _assert_equal(model, x, plain, fast)
    report = inc.plan(model, x, (5, 5))
    assert report.densified_at is not None and report.reason is not None
    assert report.estimated_cost <= 1.0


def test_approximate_mode_is_exact_at_full_threshold_and_close_below() -> None:
    model = _torchvision("resnet18", 48)
    x = torch.randn(1, 3, 48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    target = resolve_target(None, 1)
    exact = occlusion(model, x, target, window=12, stride=8, incremental=False)
    full = occlusion(model, x, target, window=12, stride=8, approximate=1.0)
    torch.testing.assert_close(full, exact, rtol=0, atol=1e-9 * float(exact.abs().max()))
    rough = occlusion(model, x, target, window=12, stride=8, approximate=0.75)
    assert not torch.equal(rough, exact)
    cosine = torch.nn.functional.cosine_similarity(rough.flatten(), exact.flatten(), dim=0)
    assert cosine > 0.8  # measured 0.93 (docs/performance.md has the curve at 224 px)


def test_incremental_options_are_checked() -> None:
    model = _torchvision("resnet18", 32)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    target = resolve_target(None, 1)
    with pytest.raises(cnnlens.InputError, match="approximate"):
        occlusion(model, x, target, window=8, approximate=1.5)
    with pytest.raises(cnnlens.InputError, match="approximate needs"):
        occlusion(model, x, target, window=8, incremental=False, approximate=0.5)


def test_explain_passes_the_options() -> None:
    model = _torchvision("resnet18", 32)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    plain = cnnlens.explain(model, x, "occlusion", window=8, stride=8, incremental=False)
    fast = cnnlens.explain(model, x, "occlusion", window=8, stride=8, incremental=True)
    torch.testing.assert_close(
        fast.attribution,
        plain.attribution,
        rtol=0,
        atol=1e-9 * float(plain.attribution.abs().max()),
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg16", "resnet50", "densenet121", "efficientnet_lite0"])
def test_incremental_equals_plain_at_224(name: str) -> None:
    if name == "efficientnet_lite0":
        model = cnnlens.load_model(name).module
    else:
        torch.manual_seed(0)
        model = _non_degenerate(getattr(torchvision.models, name)(weights=None), 224).float()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    target = resolve_target(None, 1)
    plain = occlusion(model, x, target, window=32, stride=48, incremental=False)
    fast = occlusion(model, x, target, window=32, stride=48, incremental=True)
    with torch.no_grad():
        scale = float(model(x).abs().max())
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4 * scale)


def test_coverage_says_which_occlusion_path_runs() -> None:
    model = _torchvision("resnet18", 32)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    (note,) = cnnlens.coverage(model, "occlusion", x, window=8, incremental=True).notes
    assert note.startswith("occlusion: incremental engine:") and "avgpool" in note
    (plain,) = cnnlens.coverage(model, "occlusion", x, incremental=False).notes
    assert "plain batched forwards" in plain
    untraceable = _Untraceable().double().eval()
    (fallback,) = cnnlens.coverage(untraceable, "occlusion", x[:, :, :16, :16]).notes
    assert "plain batched forwards" in fallback and "cannot be traced" in fallback


def _dense_reference(value: inc.Patched) -> Tensor:
    out = value.base.repeat(value.count, 1, 1, 1)
    h, w = value.patch.shape[-2:]
    for i, (y, x) in enumerate(zip(value.top.tolist(), value.left.tolist(), strict=True)):
        out[i, :, y : y + h, x : x + w] = value.patch[i]
    return out


@pytest.mark.parametrize(
    ("tops", "lefts", "patch", "start", "size"),
    [
        # the region is the patch grown by one on every side, inside the map and at borders
        ([3, 5], [2, 4], (4, 4), (-1, -1), (6, 6)),
        ([0, 6], [0, 6], (4, 4), (-1, -1), (6, 6)),
        # the patch is the whole map: the region is the patch padded
        ([0, 0], [0, 0], (10, 10), (-1, -1), (12, 12)),
        ([0, 0], [0, 0], (10, 10), (0, -2), (10, 13)),
        # the region is the patch
        ([1, 6], [2, 0], (4, 4), (0, 0), (4, 4)),
        # a region smaller than the patch, and one that misses it
        ([2, 2], [3, 3], (5, 5), (1, 1), (3, 3)),
        ([0, 0], [0, 0], (2, 2), (5, 5), (3, 3)),
    ],
)
def test_region_equals_slicing_the_dense_copies(
    tops: list[int],
    lefts: list[int],
    patch: tuple[int, int],
    start: tuple[int, int],
    size: tuple[int, int],
) -> None:
    """``start``: where each copy's region starts relative to its patch; the patch sits at
    the same place in every region, then (shifted by one for the second copy) not."""
    generator = torch.Generator().manual_seed(6)
    base = torch.randn(1, 3, 10, 10, dtype=torch.float64, generator=generator)
    value = inc.Patched(
        base,
        torch.randn(2, 3, *patch, dtype=torch.float64, generator=generator),
        torch.tensor(tops),
        torch.tensor(lefts),
    )
    fill = -7.0
    padded = torch.nn.functional.pad(_dense_reference(value), (6, 6, 6, 6), value=fill)
    for shift in (torch.tensor([0, 0]), torch.tensor([0, 1])):
        top, left = value.top + start[0] + shift, value.left + start[1] - shift
        expected = torch.stack(
            [
                padded[i, :, y + 6 : y + 6 + size[0], x + 6 : x + 6 + size[1]]
                for i, (y, x) in enumerate(zip(top.tolist(), left.tolist(), strict=True))
            ]
        )
        got = inc._region(value, top, left, size[0], size[1], fill)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("affine", [True, False])
def test_folded_batchnorm_equals_conv_then_norm(affine: bool) -> None:
    torch.manual_seed(7)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=affine).double()
    norm = nn.BatchNorm2d(5, affine=affine).double().eval()
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    if affine:
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    weight, bias = inc._fold(conv, norm)
    folded = torch.nn.functional.conv2d(x, weight, bias, stride=2, padding=1)
    torch.testing.assert_close(folded, norm(conv(x)), rtol=1e-12, atol=1e-12)


def test_passes_leave_the_cache_untouched_and_repeat_exactly() -> None:
    """In-place activations write only patches this pass created (ResNet's ReLUs are
    in-place; BatchNorm is folded into the convolution before it)."""
    model = _torchvision("resnet18", 40)
    graph = inc.trace(model)
    assert not isinstance(graph, str)
    x = torch.randn(1, 3, 40, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        occluder = inc.Engine(model, graph).occluder(x)
        snapshot = {n: v.clone() for n, v in occluder.cache.items() if isinstance(v, Tensor)}
        patches = torch.zeros(3, 3, 8, 8, dtype=torch.float64)
        where = (torch.tensor([0, 13, 32]), torch.tensor([5, 32, 0]))
        first = occluder.outputs(patches, *where)
        second = occluder.outputs(patches, *where)
    assert torch.equal(first, second)
    for node, value in snapshot.items():
        assert torch.equal(occluder.cache[node], value), node


def test_the_clean_pass_runs_once_per_item() -> None:
    """The traced pass that fills the engine's cache also gives the clean output (item 0's
    in automatic mode, where it also decides the path)."""
    model = _torchvision("resnet18", 48)
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    full: list[int] = []

    def record(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
        if args[0].shape[-2:] == x.shape[-2:]:  # a whole image, not a patch
            full.append(args[0].shape[0])

    handle = model.conv1.register_forward_pre_hook(record)
    try:
        cnnlens.explain(model, x[:1], "occlusion", window=8, stride=8, incremental=True)
        assert full == [1]  # the engine's pass only
        full.clear()
        # automatic mode takes the plain path here (36 windows, too little to skip): the
        # engine's pass decided it and gave the clean output; then 36 occluded copies
        assert "plain" in cnnlens.coverage(model, "occlusion", x, window=8, stride=8).notes[0]
        full.clear()
        cnnlens.explain(model, x[:1], "occlusion", window=8, stride=8, batch_size=32)
        assert full == [1, 32, 4]
        full.clear()
        cnnlens.explain(model, x, "occlusion", window=8, stride=8, incremental=True)
        # the engine's passes for item 0 and 1, and the clean forward of item 1
        assert sorted(full) == [1, 1, 1]
    finally:
        handle.remove()


class _Arithmetic(nn.Module):
    """Sums, differences and products of patched values, constants and per-channel
    parameters, in both operand orders, in place and not (the engine writes into a copy it
    made for the step when it can: the order of a difference must survive that)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 5, padding=2)
        self.c = nn.Conv2d(4, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.randn(1, 4, 1, 1))
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h, g = self.a(x), self.b(x)
        d = (h - g) * self.scale
        e = 2.0 - d
        e = g.sub(e)
        e += h
        e = torch.mul(e, h) - torch.relu(self.c(d))
        e *= 0.5
        return self.fc(e.amax(dim=(2, 3)))


def test_binary_operations_stay_exact() -> None:
    torch.manual_seed(10)
    model = _Arithmetic().double().eval()
    x = torch.randn(2, 3, 20, 20, dtype=torch.float64)
    plain, fast = _both(model, x, window=5, stride=4)
    _assert_equal(model, x, plain, fast)
    kinds = [kind for _, kind in inc.plan(model, x, (5, 5)).steps]
    assert kinds.count("merge") == 8 and kinds.index("dense") == len(kinds) - 2  # at amax

"""Feature visualization: parametrizations, transforms, objectives, the optimization loop,
the public ``visualize`` and the ``visualize`` command."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import Tensor, nn

from cnnlens import InputError, visualize
from cnnlens._hooks import count_hooks
from cnnlens.behaviour.visualize import (
    Context,
    as_objective,
    channel,
    class_logit,
    diversity,
    neuron,
    render,
    resolve_settings,
)
from cnnlens.behaviour.visualize.optimize import _total_variation
from cnnlens.behaviour.visualize.param import (
    COLOR_CORRELATION,
    FourierParam,
    decorrelate_colors,
    gaussian_blur,
)
from cnnlens.behaviour.visualize.transforms import RandomAffine, affine_matrices
from cnnlens.models import LoadedModel, Preprocessing

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def tiny_net(classes: int = 5) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, classes),
    ).eval()


def normalize(images: Tensor) -> Tensor:
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


# --- objectives -------------------------------------------------------------------------


def make_context(output: Tensor, acts: dict[str, Tensor] | None = None) -> Context:
    n = output.shape[0]
    return Context(output=output, activations=acts or {}, images=torch.zeros(n, 3, 2, 2))


def test_objectives_values_and_algebra() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    act = torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).view(2, 2, 3, 3)
    ctx = make_context(logits, {"l": act})
    assert torch.equal(class_logit(2)(ctx), torch.tensor([3.0, 6.0]))
    assert torch.equal(as_objective(1)(ctx), torch.tensor([2.0, 5.0]))
    # channel 1 of item 0 holds 9..17 (mean 13), of item 1 holds 27..35 (mean 31)
    assert torch.equal(channel("l", 1)(ctx), torch.tensor([13.0, 31.0]))
    assert torch.equal(as_objective("l:1")(ctx), torch.tensor([13.0, 31.0]))
    assert torch.equal(neuron("l", 1)(ctx), torch.tensor([13.0, 31.0]))  # centre (1, 1)
    assert torch.equal(neuron("l", 0, 0, 2)(ctx), torch.tensor([2.0, 20.0]))
    combined = 2 * class_logit(0) - channel("l", 1) / 2 + 1.5
    assert combined.layers == frozenset({"l"})
    assert torch.equal(combined(ctx), torch.tensor([2 - 6.5 + 1.5, 8 - 15.5 + 1.5]))
    summed = sum([class_logit(0), class_logit(1), class_logit(2)])
    assert isinstance(summed, type(class_logit(0)))
    assert torch.equal(summed(ctx), torch.tensor([6.0, 15.0]))
    assert torch.equal((1 - class_logit(0))(ctx), torch.tensor([0.0, -3.0]))
    assert torch.equal((-class_logit(0) - 1)(ctx), torch.tensor([-2.0, -5.0]))
    # plain callables see the model output
    assert torch.equal(as_objective(lambda out: out[:, 0] * 10)(ctx), torch.tensor([10.0, 40.0]))
    assert torch.equal((class_logit(1) + (lambda out: out.sum(1)))(ctx), torch.tensor([8.0, 20.0]))


def test_diversity_is_minus_mean_gram_similarity() -> None:
    same = torch.randn(1, 4, 5, 5).expand(3, -1, -1, -1)
    ctx = make_context(torch.zeros(3, 1), {"l": same})
    assert torch.allclose(diversity("l")(ctx), torch.full((3,), -1.0), atol=1e-6)
    # channels active in disjoint sets: the Gram matrices have disjoint support → 0
    act = torch.zeros(2, 4, 3, 3)
    act[0, :2] = torch.rand(2, 3, 3)
    act[1, 2:] = torch.rand(2, 3, 3)
    ctx = make_context(torch.zeros(2, 1), {"l": act})
    assert torch.allclose(diversity("l")(ctx), torch.zeros(2), atol=1e-7)
    # against a float64 hand computation for random activations
    act = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    grams = [(a.reshape(4, -1) @ a.reshape(4, -1).T).flatten() for a in act]
    grams = [g / g.norm() for g in grams]
    want = torch.stack(
        [-sum(grams[i] @ grams[j] for j in range(3) if j != i) / 2 for i in range(3)]
    )
    got = diversity("l")(make_context(torch.zeros(3, 1), {"l": act}))
    assert torch.allclose(got, want)


def test_objective_errors() -> None:
    ctx = make_context(torch.zeros(2, 3), {"l": torch.zeros(2, 4, 3, 3)})
    with pytest.raises(InputError, match="out of range"):
        class_logit(3)(ctx)
    with pytest.raises(InputError, match="out of range"):
        channel("l", 4)(ctx)
    with pytest.raises(InputError, match="outside"):
        neuron("l", 0, 5, 0)(ctx)
    with pytest.raises(InputError, match="one score per image"):
        as_objective(lambda out: out)(ctx)
    for bad in ("features", "features:x", ":3", 2.5, True, -1):
        with pytest.raises(InputError):
            as_objective(bad)  # type: ignore[arg-type]


# --- parametrizations and transforms ----------------------------------------------------


def test_color_matrix_and_blank_fourier_image_is_grey() -> None:
    assert torch.allclose(COLOR_CORRELATION.norm(dim=0).max(), torch.tensor(1.0))
    x = torch.randn(2, 3, 4, 5)
    want = torch.einsum("ij,njhw->nihw", COLOR_CORRELATION, x)
    assert torch.allclose(decorrelate_colors(x), want)
    param = FourierParam(
        2, (6, 7), init="blank", generator=torch.Generator(), device=torch.device("cpu")
    )
    assert torch.equal(param(), torch.full((2, 3, 6, 7), 0.5))


def test_fourier_param_is_scaled_inverse_fft() -> None:
    h, w = 8, 6
    param = FourierParam(
        1,
        (h, w),
        std=1.0,
        decorrelate=False,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
    )
    spectrum = torch.view_as_complex(param.spectrum.detach().double())
    fy = torch.fft.fftfreq(h, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.rfftfreq(w, dtype=torch.float64).view(1, -1)
    scale = 1.0 / torch.sqrt(fx**2 + fy**2).clamp(min=1.0 / 8)
    want = torch.sigmoid(torch.fft.irfft2(spectrum * scale, s=(h, w), norm="ortho") / 4)
    assert torch.allclose(param().detach().double(), want, atol=1e-6)


def test_fourier_blur_is_a_circular_gaussian_blur() -> None:
    h = w = 32
    gen = torch.Generator().manual_seed(0)
    param = FourierParam(
        1, (h, w), std=1.0, decorrelate=False, generator=gen, device=torch.device("cpu")
    )
    with torch.no_grad():
        before = torch.logit(param().double())
    param.blur(1.0)
    with torch.no_grad():
        after = torch.logit(param().double())
    # circular Gaussian blur in the pixel domain, float64
    kernel = torch.exp(-0.5 * torch.arange(-8, 9, dtype=torch.float64) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(before, (8, 8, 8, 8), mode="circular")
    k2 = (kernel.view(-1, 1) * kernel.view(1, -1)).expand(3, 1, 17, 17)
    want = F.conv2d(padded, k2, groups=3)
    # (the sampled kernel's spectrum is the periodized Gaussian: equal up to aliasing)
    assert float((after - want).abs().max()) < 5e-3 < float((after - before).abs().max()) / 20


def test_gaussian_blur_keeps_constants_and_mass() -> None:
    flat = torch.full((1, 3, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat)
    dot = torch.zeros(1, 1, 21, 21)
    dot[0, 0, 10, 10] = 1.0
    out = gaussian_blur(dot, 1.0)
    assert math.isclose(float(out.sum()), 1.0, rel_tol=1e-5)
    assert int(out.argmax()) == 10 * 21 + 10


def test_affine_matrices_move_a_point_where_stated() -> None:
    h, w = 40, 60
    image = torch.zeros(1, 1, h, w)
    image[0, 0, 10, 45] = 1.0  # pixel centre (x, y) = (45, 10) → relative (15.5, -9.5)
    angle = torch.tensor([math.pi / 2])
    theta = affine_matrices(
        torch.tensor([1.0]), angle, torch.tensor([0.0]), torch.tensor([0.0]), (h, w)
    )
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
    out = F.grid_sample(image, grid, align_corners=False)
    # view p shows image at R(90°) p, so the point q appears at R(-90°) q: (x, y) → (y, -x)
    y, x = divmod(int(out.argmax()), w)
    assert (x - (w / 2 - 0.5), y - (h / 2 - 0.5)) == (-9.5, -15.5)
    theta = affine_matrices(
        torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([-2.0]), (h, w)
    )
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
    # view p shows image at p / 2 + (3, -2)
    px, py = 7.5, -4.5  # the centre of pixel (row 15, column 37)
    gx, gy = grid[0, int(py + h / 2 - 0.5), int(px + w / 2 - 0.5)].tolist()
    assert math.isclose(gx * w / 2, px / 2 + 3, abs_tol=1e-4)
    assert math.isclose(gy * h / 2, py / 2 - 2, abs_tol=1e-4)


def test_random_affine_identity_and_grey_fill() -> None:
    images = torch.rand(2, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    assert RandomAffine(0, 0, 0)(images, gen) is images
    moved = RandomAffine(jitter=8, scale=0, rotate=0)(torch.full((4, 3, 16, 16), 0.5), gen)
    assert torch.allclose(moved, torch.full_like(moved, 0.5))
    shifted = RandomAffine(jitter=6, scale=0.2, rotate=20)(images, gen)
    assert shifted.shape == images.shape and not torch.equal(shifted, images)


def test_total_variation_hand_value() -> None:
    x = torch.tensor([[0.0, 1.0], [0.5, 0.25]]).view(1, 1, 2, 2)
    # vertical |0.5-0| + |0.25-1| = 1.25, horizontal |1-0| + |0.25-0.5| = 1.25
    assert torch.allclose(_total_variation(x), torch.tensor([2.5]))


# --- the loop ---------------------------------------------------------------------------


def test_objective_rises_class_and_channel() -> None:
    net = tiny_net()
    for spec in (2, "2:3"):
        settings = resolve_settings(net, size=(32, 32), progress=False)
        start = render(net, [as_objective(spec)], settings, steps=0, seed=0).images
        result = render(net, [as_objective(spec)], settings, steps=150, seed=0)
        assert result.history.shape == (150, 1)
        blocks = result.history[:, 0].view(5, 30).mean(dim=1)
        assert bool((blocks[1:] > blocks[:-1]).all()), blocks  # rises block after block
        clean = render_score(net, spec, start), render_score(net, spec, result.images)
        assert clean[1] > 1.25 * clean[0] > 0, (spec, clean)


def render_score(net: nn.Module, spec: int | str, images: Tensor) -> float:
    from cnnlens._hooks import Recorder

    obj = as_objective(spec)
    layers = {name: dict(net.named_modules())[name] for name in obj.layers}
    with torch.no_grad(), Recorder(layers.values(), detach=True) as rec:
        out = net(normalize(images))
        ctx = Context(out, {n: rec.last(m) for n, m in layers.items()}, images)
        return float(obj(ctx).sum())


def test_simonyan_recipe_rises_and_l2_step_is_exact() -> None:
    net = tiny_net()
    settings = resolve_settings(net, "simonyan", size=(24, 24), progress=False, lr=5.0)
    assert settings.param == "pixel" and settings.init == "blank"
    assert (settings.jitter, settings.scale, settings.rotate, settings.tv) == (0, 0, 0, 0)
    start = render(net, [as_objective(1)], settings, steps=0, seed=0).images
    assert torch.allclose(start, torch.tensor(MEAN).view(1, 3, 1, 1).expand(1, 3, 24, 24))
    history = render(net, [as_objective(1)], settings, steps=50, seed=0).history[:, 0]
    assert bool((history[1:] >= history[:-1]).all())  # plain ascent, small steps: monotone
    assert history[-1] > history[0] + 0.05
    # one SGD step on −λ‖(x − μ)/σ‖² alone: x ← x − lr · 2λ (x − μ) / σ²
    lam, lr = 0.01, 3.0
    zero = as_objective(lambda out: out[:, 0] * 0.0)
    s = resolve_settings(net, "simonyan", size=(4, 4), init="random", init_std=0.2, l2=lam, lr=lr)
    x0 = render(net, [zero], s, steps=0, seed=5).images.double()
    x1 = render(net, [zero], s, steps=1, seed=5).images.double()
    mu = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    sd = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.allclose(x1, x0 - lr * 2 * lam * (x0 - mu) / sd**2, atol=1e-6)


def test_pixel_gradient_goes_through_the_normalization() -> None:
    """Model = identity on its (normalized) input: one SGD step on pixel k of channel c
    moves it by lr / std[c] exactly (the image lives in pixel space)."""
    ident = nn.Flatten()
    mean, std = (0.2, 0.3, 0.4), (0.5, 0.25, 0.125)
    loaded = LoadedModel(
        module=ident,
        name="ident",
        labels=[],
        preprocessing=Preprocessing(crop=(3, 5), mean=mean, std=std),
    )
    k = 1 * 15 + 7  # channel 1, row 1, column 2
    before = visualize(loaded, lambda out: out[:, k], steps=0, recipe="simonyan", l2=0.0)
    assert before.shape == (1, 3, 3, 5)
    assert torch.allclose(before, torch.tensor(mean).view(1, 3, 1, 1).expand(1, 3, 3, 5))
    after = visualize(loaded, lambda out: out[:, k], steps=1, recipe="simonyan", l2=0.0, lr=0.01)
    delta = after - before
    assert math.isclose(float(delta.view(-1)[k]), 0.01 / 0.25, rel_tol=1e-5)
    delta.view(-1)[k] = 0
    assert float(delta.abs().max()) == 0.0


def test_grayscale_model_gets_one_channel_and_grey_images() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    net(torch.zeros(1, 1, 12, 12))
    loaded = LoadedModel(
        module=net,
        name="grey",
        labels=["a", "b", "c"],
        preprocessing=Preprocessing(crop=(12, 12), mean=(0.3,) * 3, std=(0.2,) * 3, grayscale=True),
    )
    images = visualize(loaded, 2, steps=3, progress=False)
    assert images.shape == (1, 3, 12, 12)
    assert torch.allclose(images[:, 0], images[:, 1]) and torch.allclose(images[:, 1], images[:, 2])
    assert float(images.std()) > 0


def test_deterministic_for_a_seed() -> None:
    net = tiny_net()
    a = visualize(net, [0, "2:1"], steps=6, seed=3, size=32, diversity=0.5, progress=False)
    b = visualize(net, [0, "2:1"], steps=6, seed=3, size=32, diversity=0.5, progress=False)
    c = visualize(net, [0, "2:1"], steps=6, seed=4, size=32, diversity=0.5, progress=False)
    assert a.shape == (2, 3, 32, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_regularizers_change_the_result_and_blur_smooths() -> None:
    net = tiny_net()
    base: dict[str, Any] = {"steps": 10, "size": 32, "progress": False, "init": "blank"}
    plain = visualize(net, 1, **base)  # type: ignore[arg-type]
    options: list[dict[str, object]] = [
        {"tv": 0.01},
        {"l2": 1e-3},
        {"normalize_grad": True},
        {"param": "pixel", "lr": 0.01},
        {"decorrelate": False},
        {"jitter": 0, "scale": 0, "rotate": 0},
        {"blur_every": 0},
    ]
    for extra in options:
        assert not torch.equal(visualize(net, 1, **base, **extra), plain), extra  # type: ignore[arg-type]
    noisy: dict[str, Any] = {**base, "param": "pixel", "init": "random", "init_std": 0.2}
    # two steps; the blur comes after the first only (never after the last)
    rough = visualize(net, 1, **{**noisy, "steps": 2, "blur_every": 0})
    smooth = visualize(net, 1, **{**noisy, "steps": 2, "blur_every": 1, "blur_sigma": 1.0})
    assert _total_variation(smooth) < 0.5 * _total_variation(rough)


def test_diversity_term_makes_the_batch_differ() -> None:
    net = tiny_net()
    opts: dict[str, Any] = {
        "steps": 25,
        "size": 32,
        "progress": False,
        "diversity_layer": "2",
        "lr": 0.1,
    }
    same = visualize(net, [1, 1], diversity=0.0, **opts)  # type: ignore[arg-type]
    apart = visualize(net, [1, 1], diversity=50.0, **opts)  # type: ignore[arg-type]
    div = diversity("2")

    def similarity(images: Tensor) -> float:
        from cnnlens._hooks import Recorder

        with torch.no_grad(), Recorder([net[2]], detach=True) as rec:
            net(normalize(images))
            return -float(div(Context(None, {"2": rec.last(net[2])}, images)).mean())

    assert similarity(apart) < similarity(same) - 0.01


def test_model_left_untouched_on_a_real_architecture(untouched) -> None:  # type: ignore[no-untyped-def]
    net = torchvision.models.resnet18(weights=None)
    net.layer1.train()  # mixed training flags must come back as they were
    net.fc.weight.requires_grad_(False)
    net.conv1.weight.grad = torch.ones_like(net.conv1.weight)
    probe = torch.rand(1, 3, 64, 64)
    net.eval()
    snap = untouched.take(net, probe)
    net.layer1.train()
    snap.training = [m.training for m in net.modules()]
    images = visualize(
        net,
        [3, "layer1:2", neuron("layer3.1.relu", 5) + 0.1 * class_logit(7)],
        steps=3,
        size=64,
        diversity=0.1,
        progress=False,
    )
    assert images.shape == (3, 3, 64, 64)
    assert [m.training for m in net.modules()] == snap.training
    net.layer1.eval()
    snap.training = [m.training for m in net.modules()]
    snap.assert_same(net, probe)


def test_errors_leave_no_hooks() -> None:
    net = tiny_net()
    with pytest.raises(InputError, match="unknown layer"):
        visualize(net, "conv9:1", steps=1, size=16)
    with pytest.raises(InputError, match="out of range"):
        visualize(net, ["2:99"], steps=1, size=16, progress=False)
    with pytest.raises(InputError, match="one score per image"):
        visualize(net, lambda out: out, steps=1, size=16, progress=False)
    with pytest.raises(InputError, match="unknown visualize option"):
        visualize(net, 1, jiter=3)
    with pytest.raises(InputError, match="unknown recipe"):
        visualize(net, 1, recipe="fancy")
    with pytest.raises(InputError, match="param"):
        visualize(net, 1, param="wavelet")
    with pytest.raises(InputError, match="at least one"):
        visualize(net, [])
    assert count_hooks(net) == 0
    assert all(p.requires_grad for p in net.parameters())
    assert all(p.grad is None for p in net.parameters())


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    visualize(tiny_net(), 1, steps=3, size=16, progress=True)
    assert "visualize" in capsys.readouterr().err


# --- command line -----------------------------------------------------------------------


def test_cli_grid_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cnnlens.cli import main

    out = tmp_path / "vis.png"
    base = ["visualize", "--model", "resnet18", "--random-weights", "--steps", "1"]
    code = main([*base, "--target", "3", "--target", "layer1:2", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    with Image.open(out) as picture:
        assert picture.width > 2 * 224 and picture.height > 224  # two captioned tiles
    single = tmp_path / "one.png"
    assert main([*base, "--target", "7", "--plain-l2", "0.001", "-o", str(single)]) == 0
    with Image.open(single) as picture:
        assert picture.size == (224, 224)
    assert main([*base, "--target", "layer9:2", "-o", str(out)]) == 2
    assert "unknown layer" in capsys.readouterr().err
    assert main([*base, "--target", "1000", "-o", str(out)]) == 2


@pytest.mark.slow
def test_acceptance_efficientnet_classes_are_recognized() -> None:
    """Default settings, five ImageNet classes: each image is classified as its class with
    probability ≥ 0.9 by the model that made it (docs/visualize.md shows them)."""
    import cnnlens

    model = cnnlens.load_model("efficientnet_lite0")
    classes = [1, 130, 323, 949, 980]  # goldfish, flamingo, monarch, strawberry, volcano
    images = visualize(model, classes)
    assert images.shape == (5, 3, 224, 224)
    prep = model.preprocessing
    with torch.no_grad():
        x = (images - torch.tensor(prep.mean).view(1, 3, 1, 1)) / torch.tensor(prep.std).view(
            1, 3, 1, 1
        )
        probs = torch.softmax(model.module(x), dim=1)
    got = probs[torch.arange(5), torch.tensor(classes)]
    assert bool((got >= 0.9).all()), got

"""The benchmark's cases: every method of ``cnnlens.METHODS`` (each LRP composite on its
own line) plus feature visualization, each against its floor and its peers, with the goal
of issue 18; and the dataset tools against their raw forward passes.

``method_cases(setup)`` builds them for one model; ``setup(model, ...)`` makes the
:class:`peer_entries.Setup` (``module`` given: any model, e.g. a tiny one in the tests).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import cnnlens
from bounds import deeplift_bound, interception_bound, lrp_bound
from cnnlens._trace import default_feature_layer
from cnnlens.attribution.lrp import COMPOSITES
from cnnlens.attribution.occlusion import window_starts
from cnnlens.behaviour.visualize import visualize
from harness import Case, Entry, Goal, Result
from peer_entries import Setup, peers_for

__all__ = ["dataset_cases", "heavy_setup", "method_cases", "setup", "smoke_cases"]


def _module(model: str) -> nn.Module:
    if model in ("efficientnet_lite0", "fashion_cnn"):
        return cnnlens.load_model(model).module
    torch.manual_seed(0)
    return torchvision.models.get_model(model, weights=None).eval()


def _name(module: nn.Module, layer: nn.Module) -> str:
    return next(n for n, m in module.named_modules() if m is layer)


def setup(
    model: str,
    batch: int,
    size: int,
    *,
    module: nn.Module | None = None,
    samples: int = 16,
    rows: int = 32,
    window: int = 32,
    stride: int = 8,
) -> Setup:
    """The model (parameters frozen: nobody here needs their gradients), a seeded batch,
    its top classes, the default feature layer and the classifier layer."""
    module = _module(model) if module is None else module
    for p in module.parameters():
        p.requires_grad_(False)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = module(x).argmax(dim=1)
        layer = _name(module, default_feature_layer(module, x))
    linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    return Setup(model, module, x, target, layer, linears[-1], samples, rows, window, stride)


# ---- floors -------------------------------------------------------------------------------


def _input_gradient(s: Setup) -> Tensor:
    """F: one forward pass and one backward pass to the input, nothing else."""
    x = s.x.detach().requires_grad_()
    (grad,) = torch.autograd.grad(s.module(x).gather(1, s.target.view(-1, 1)).sum(), x)
    return grad


def _copies_gradient(s: Setup, copies: int) -> Callable[[], list[Tensor]]:
    """F on ``copies`` copies of each item, ``s.rows`` rows a pass (as SmoothGrad and
    integrated gradients batch them; the copies are made once, outside the timing)."""
    x = s.x.repeat_interleave(copies, dim=0)
    target = s.target.repeat_interleave(copies)
    parts = [
        dataclasses.replace(s, x=x[i : i + s.rows], target=target[i : i + s.rows])
        for i in range(0, len(x), s.rows)
    ]
    return lambda: [_input_gradient(part) for part in parts]


def _layer_gradient(s: Setup) -> Tensor:
    """Forward with the layer's output made a leaf, backward to that leaf, the weighted sum."""
    found: list[Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Tensor) -> Tensor:
        leaf = out.detach().requires_grad_()
        found.append(leaf)
        return leaf.clone()  # downstream in-place ops must not touch the leaf

    handle = s.module.get_submodule(s.layer).register_forward_hook(hook)
    try:
        out = s.module(s.x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(out.gather(1, s.target.view(-1, 1)).sum(), found[-1])
    return torch.relu((grad.mean(dim=(2, 3), keepdim=True) * found[-1]).sum(dim=1))


def _forward(s: Setup) -> Tensor:
    with torch.inference_mode():
        out = s.module(s.x)
    assert isinstance(out, Tensor)
    return out


def _batched_forwards(
    module: nn.Module, copies: int, rows: int, like: Tensor
) -> Callable[[], None]:
    """``copies`` forwards of inputs shaped like ``like``, ``rows`` at a time (inputs made
    once, outside the timing)."""
    sizes = [min(rows, copies - start) for start in range(0, copies, rows)]
    batches = {n: torch.randn(n, *like.shape[1:]) for n in set(sizes)}

    def run() -> None:
        with torch.inference_mode():
            for n in sizes:
                module(batches[n])

    return run


def _channels(s: Setup) -> int:
    found: list[int] = []
    handle = s.module.get_submodule(s.layer).register_forward_hook(
        lambda _m, _i, out: found.append(out.shape[1])
    )
    try:
        _forward(s)
    finally:
        handle.remove()
    return found[-1]


def _windows(s: Setup) -> int:
    h, w = s.x.shape[2:]
    return len(window_starts(h, s.window, s.stride)) * len(window_starts(w, s.window, s.stride))


# ---- goals ---------------------------------------------------------------------------------


def _within(limit: float, text: str = "", *, from_issue: bool = True) -> Goal:
    return Goal(
        text or f"≤ {limit:g}× floor",
        lambda r: r.ratio(r.ours) <= limit,
        from_issue,
        lambda r: limit,
    )


def _gradcam_limit(r: Result) -> float:
    return min([1.05, *(r.ratio(p) for p in r.peers if not p.error)])


def _gradcam_goal(r: Result) -> bool | None:
    return r.ratio(r.ours) <= _gradcam_limit(r)


def _scorecam_goal(r: Result) -> bool | None:
    if r.ours.memory is None or r.floor.memory is None:
        return r.ratio(r.ours) <= 1.0
    bounded = r.ours.memory <= 1.5 * r.floor.memory + 64 * 2**20
    return r.ratio(r.ours) <= 1.0 and bounded


# ---- cases ----------------------------------------------------------------------------------


def _explain(s: Setup, method: str, **options: Any) -> Callable[[], object]:
    return lambda: cnnlens.explain(s.module, s.x, method, target=s.targets, **options)


def _attribution(result: object) -> Tensor:
    """The attribution map of a cnnlens explanation or of a peer's result (a tensor)."""
    if isinstance(result, cnnlens.Explanation):
        return result.attribution
    if not isinstance(result, Tensor):
        raise TypeError(f"cannot compare a result of type {type(result).__name__}")
    return result


def _gradient_cases(s: Setup) -> Iterator[Case]:
    floor = Entry("F", lambda: _input_gradient(s))
    for method in ("saliency", "input_x_gradient", "deconvnet", "guided_backprop"):
        goal = _within(1.05, from_issue=method != "input_x_gradient")
        intercepts = method in ("deconvnet", "guided_backprop")
        yield Case(
            method,
            s.model,
            floor,
            Entry("cnnlens", _explain(s, method)),
            peers_for(method, s),
            goal,
            bound=interception_bound(s) if intercepts else None,
            compared=_attribution,
        )
    n = s.samples
    floor_n = Entry(f"F on {n} copies, {s.rows} rows a pass", _copies_gradient(s, n))
    options = {"smoothgrad": {"samples": n}, "integrated_gradients": {"steps": n}}
    for method, opts in options.items():
        ours = Entry("cnnlens", _explain(s, method, batch_size=s.rows, **opts))
        goal = _within(1.05, from_issue=False)
        yield Case(method, s.model, floor_n, ours, peers_for(method, s), goal, f"{n} samples")
    yield Case(
        "deeplift",
        s.model,
        floor,
        Entry("cnnlens", _explain(s, "deeplift")),
        peers_for("deeplift", s),
        _within(1.3),
        bound=deeplift_bound(s, lambda: _input_gradient(s)),
        compared=_attribution,
    )
    for composite in COMPOSITES:
        # z^B's box as zennit is given it (cnnlens' default, each item's per-channel range,
        # would be another computation)
        box = s.box if "box" in composite else {}
        yield Case(
            "lrp",
            s.model,
            floor,
            Entry("cnnlens", _explain(s, "lrp", composite=composite, **box)),
            peers_for("lrp", s, composite=composite),
            _within(2.0),
            composite,
            bound=lrp_bound(s, composite),
            compared=_attribution,
        )


def _cam_cases(s: Setup) -> Iterator[Case]:
    floor = Entry("forward + backward to the layer", lambda: _layer_gradient(s))
    gradcam_goal = Goal("≤ 1.05× floor and ≤ fastest peer", _gradcam_goal, limit=_gradcam_limit)
    for method in ("gradcam", "gradcam_pp", "layercam"):
        ours = Entry("cnnlens", _explain(s, method, layer=s.layer))
        yield Case(method, s.model, floor, ours, peers_for(method, s), gradcam_goal)
    yield Case(
        "cam",
        s.model,
        Entry("forward", lambda: _forward(s)),
        Entry("cnnlens", _explain(s, "cam", layer=s.layer)),
        peers_for("cam", s),
        _within(1.05, from_issue=False),
    )
    yield Case(
        "guided_gradcam",
        s.model,
        Entry("F", lambda: _input_gradient(s)),
        Entry("cnnlens", _explain(s, "guided_gradcam", layer=s.layer)),
        peers_for("guided_gradcam", s),
        _within(1.15),
        compared=_attribution,
    )


def _heavy_cases(s: Setup, rounds: int | None) -> Iterator[Case]:
    """Score-CAM and occlusion (on the setup's batch: give them a small one); ``rounds``:
    timed rounds without warm-up (None: the run's rounds and warm-up)."""
    runs: dict[str, Any] = {"rounds": rounds, "warmup": None if rounds is None else 0}
    c = _channels(s)
    b = len(s.x)
    forwards = _batched_forwards(s.module, c, s.rows, s.x)
    floor = Entry(f"{c} + 1 forwards", lambda: [_forward(s), *(forwards() for _ in range(b))])
    yield Case(
        "scorecam",
        s.model,
        floor,
        Entry("cnnlens", _explain(s, "scorecam", layer=s.layer, batch_size=s.rows)),
        peers_for("scorecam", s),
        Goal("≤ 1.0× floor, peak memory ≤ 1.5× floor's", _scorecam_goal),
        f"batch {b}",
        **runs,
    )
    windows = _windows(s)
    goal = (
        _within(0.5, "≤ 0.5× floor (≥ 2× faster)")
        if s.model == "resnet50"
        else _within(1.0, from_issue=False)
    )
    yield Case(
        "occlusion",
        s.model,
        Entry(f"{b * windows} forwards", _batched_forwards(s.module, b * windows, s.rows, s.x)),
        Entry(
            "cnnlens",
            _explain(
                s, "occlusion", window=s.window, stride=s.stride, batch_size=s.rows, progress=False
            ),
        ),
        peers_for("occlusion", s),
        goal,
        f"batch {b}, {s.window} px / stride {s.stride}: {windows} windows",
        **runs,
    )


def _naive_visualize(s: Setup, steps: int) -> Tensor:
    """The textbook loop: pixels as a leaf, Adam, ``loss.backward()``."""
    image = s.x.detach().clone().requires_grad_()
    optimizer = torch.optim.Adam([image], lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        (-s.module(image).gather(1, s.target.view(-1, 1)).sum()).backward()
        optimizer.step()
    return image.detach()


def _visualize_case(s: Setup, steps: int) -> Case:
    size = tuple(s.x.shape[2:])
    return Case(
        "feature visualization",
        s.model,
        Entry(f"{steps} × F", lambda: [_input_gradient(s) for _ in range(steps)]),
        Entry(
            "cnnlens",
            lambda: visualize(s.module, s.targets, steps=steps, size=size, progress=False),
        ),
        [Entry("naive Adam loop on pixels", lambda: _naive_visualize(s, steps))],
        _within(1.3, from_issue=False),
        f"{steps} steps, default recipe, setup included",
    )


def method_cases(
    s: Setup, *, heavy: Setup | None = None, heavy_rounds: int | None = None, steps: int = 16
) -> list[Case]:
    """Every method of ``cnnlens.METHODS`` (LRP: one case per composite) and feature
    visualization on ``s``; Score-CAM and occlusion on ``heavy`` (default: ``s``) with
    ``heavy_rounds`` timed rounds and no warm-up (None: as the others)."""
    cases = [
        *_gradient_cases(s),
        *_cam_cases(s),
        *_heavy_cases(heavy or s, heavy_rounds),
        _visualize_case(s, steps),
    ]
    covered = {case.method for case in cases}
    missing = set(cnnlens.METHODS) - covered
    if missing:
        raise AssertionError(f"no benchmark case for {sorted(missing)}")
    return cases


def smoke_cases(s: Setup) -> list[Case]:
    """The machine's noise level (a forward pass timed as floor and as ours: its ratio,
    ideally 1.00, shows how far apart two identical computations land in this run) and
    ``cnnlens.layers`` (with receptive fields) against one forward pass."""
    forward = Entry("forward", lambda: _forward(s))
    return [
        Case("noise level", s.model, forward, Entry("the same forward", lambda: _forward(s))),
        Case("layers()", s.model, forward, Entry("cnnlens", lambda: cnnlens.layers(s.module))),
    ]


def heavy_setup(s: Setup, batch: int) -> Setup:
    """``s`` on its first ``batch`` items (for Score-CAM and occlusion)."""
    return dataclasses.replace(s, x=s.x[:batch], target=s.target[:batch])


# ---- the dataset tools ------------------------------------------------------------------------


def dataset_cases(items: int = 1024, batch: int = 64, rows: int = 100_000) -> list[Case]:
    """extract_features and top_patches (fashion_cnn on random 28×28 items) against the raw
    forward pass to their layer; exact and IVF nearest-neighbour search."""
    module = _module("fashion_cnn")
    features = module.get_submodule("features")
    x = torch.randn(items, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    data = TensorDataset(x, torch.zeros(items, dtype=torch.int64))
    chunks = [x[i : i + batch] for i in range(0, items, batch)]
    tmp = Path(tempfile.mkdtemp(prefix="cnnlens-bench-"))
    counter = iter(range(10**6))

    def floor() -> None:
        with torch.inference_mode():
            for chunk in chunks:
                features(chunk)

    def extract() -> None:
        out = tmp / f"s{next(counter)}"
        cnnlens.extract_features(
            module, data, "features", batch_size=batch, out=out, progress=False
        )
        shutil.rmtree(out, ignore_errors=True)

    model = f"fashion_cnn, {items} items"
    forward = Entry("forward to the layer", floor)
    return [
        Case(
            "extract_features",
            model,
            forward,
            Entry("cnnlens", extract),
            goal=_within(1 / 0.9, "throughput ≥ 0.9× floor", from_issue=False),
            note="store on disk",
        ),
        Case(
            "top_patches",
            model,
            forward,
            Entry(
                "cnnlens",
                lambda: cnnlens.top_patches(
                    module, data, "features", k=9, batch_size=batch, progress=False
                ),
            ),
            goal=_within(1.2, from_issue=False),
            note="all channels, k=9",
        ),
        _nearest_case(rows),
    ]


def _nearest_case(rows: int, dim: int = 128, queries: int = 1000) -> Case:
    from cnnlens.dataset._nearest import Searcher

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(max(rows // 1000, 10), dim)).astype(np.float32) * 3
    base = centres[rng.integers(0, len(centres), rows)] + rng.normal(size=(rows, dim)).astype(
        np.float32
    )
    asked = centres[rng.integers(0, len(centres), queries)] + rng.normal(
        size=(queries, dim)
    ).astype(np.float32)
    exact = Searcher(base, "cosine", exact=True)
    ivf = Searcher(base, "cosine", exact=False)
    truth, _ = exact.search(asked, 10)
    found, _ = ivf.search(asked, 10)
    recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))
    return Case(
        "nearest (IVF)",
        f"{rows} × {dim} clustered vectors",
        Entry("exact search", lambda: exact.search(asked, 10)),
        Entry("cnnlens IVF", lambda: ivf.search(asked, 10)),
        goal=Goal(
            "≤ 1.0× exact search, recall@10 ≥ 0.95",
            lambda r: r.ratio(r.ours) <= 1.0 and recall >= 0.95,
            from_issue=False,
            limit=(lambda r: 1.0) if recall >= 0.95 else None,
        ),
        note=f"{queries} queries, k=10, nprobe {ivf.nprobe}, recall@10 {recall:.3f}",
    )

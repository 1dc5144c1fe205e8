"""The model guard: model forms (torch.compile, DataParallel, TorchScript), one lock per
model for calls from several threads, and flags restored once, at the outermost exit."""

from __future__ import annotations

import gc
import warnings
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor, nn

import cnnlens
from cnnlens import InputError, explain
from cnnlens._guard import guard, unwrap

from .conftest import ModelSnapshot

THREADED_METHODS = ("saliency", "gradcam", "deeplift", "lrp", "guided_backprop")


def _randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (a fresh BN is the identity
    in eval mode, which would hide a train/eval mix-up)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    return _randomize_batchnorm(net)


def _inputs(n: int = 2, size: int = 12, seed: int = 1) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize("train", [True, False], ids=["train-mode", "eval-mode"])
def test_threads_get_sequential_answers_and_leave_the_model(train: bool) -> None:
    net = _small_net().train(train)
    # a mix of flags to restore: the first convolution's weight frozen by the user
    net[0].weight.requires_grad_(False)
    x = _inputs()
    before = ModelSnapshot.take(net)
    expected = {m: explain(net, x, m).attribution for m in THREADED_METHODS}
    before.assert_same(net)

    def calls(thread: int) -> list[tuple[str, Tensor]]:
        out = []
        for i in range(20):
            method = THREADED_METHODS[(thread + i) % len(THREADED_METHODS)]
            out.append((method, explain(net, x, method).attribution))
        return out

    with ThreadPoolExecutor(4) as pool:
        results = [r for rs in pool.map(calls, range(4)) for r in rs]
    assert len(results) == 80
    wrong = [m for m, a in results if not torch.equal(a, expected[m])]
    assert not wrong, f"{len(wrong)} of 80 threaded results differ: {sorted(set(wrong))}"
    before.assert_same(net)


def test_threads_mixing_other_calls_get_sequential_answers() -> None:
    """Every call that sets modes or hooks, not only explain, on one train-mode model."""
    net = _small_net().train()
    x = _inputs()
    saliency = explain(net, x, "saliency")
    calls: dict[str, Callable[[], Tensor]] = {
        "activations": lambda: cnnlens.activations(net, x, "4"),
        "layers": lambda: torch.tensor(
            [d for info in cnnlens.layers(net, 12) for d in info.output_shape or ()]
        ),
        "receptive_field": lambda: torch.tensor(cnnlens.receptive_field(net, "3", 12).size),
        "deletion": lambda: (
            cnnlens.deletion_insertion(net, x, saliency, steps=4, progress=False).deletion_curve
        ),
        "visualize": lambda: cnnlens.visualize(net, 2, steps=2, size=(12, 12), progress=False),
        "gradcam": lambda: explain(net, x, "gradcam").attribution,
    }
    before = ModelSnapshot.take(net)
    expected = {name: call() for name, call in calls.items()}
    names = sorted(calls)

    def run(thread: int) -> list[tuple[str, Tensor]]:
        chosen = [names[(thread + i) % len(names)] for i in range(2 * len(names))]
        return [(name, calls[name]()) for name in chosen]

    with ThreadPoolExecutor(4) as pool:
        results = [r for rs in pool.map(run, range(4)) for r in rs]
    wrong = sorted({name for name, value in results if not torch.equal(value, expected[name])})
    assert not wrong, f"threaded results differ: {wrong}"
    before.assert_same(net)


def test_threads_on_a_model_and_on_one_of_its_parts_take_turns() -> None:
    """A guard on ``model`` and one on ``model.features`` share modules: each snapshots,
    freezes and restores the flags of the other's, so they must not overlap (before, the
    part could keep the eval mode it saw while the whole model was guarded)."""
    torch.manual_seed(0)
    features = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3)
    )
    model = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    _randomize_batchnorm(model).train()
    x = _inputs()

    def whole() -> Tensor:
        return explain(model, x, "saliency").attribution

    def part() -> Tensor:
        return explain(
            features, x, "saliency", target=lambda out: out.sum(dim=(1, 2, 3))
        ).attribution

    before = ModelSnapshot.take(model)
    expected = {"whole": whole(), "part": part()}
    before.assert_same(model)

    def run(thread: int) -> list[tuple[str, Tensor]]:
        name, call = ("whole", whole) if thread % 2 == 0 else ("part", part)
        return [(name, call()) for _ in range(60)]

    with ThreadPoolExecutor(4) as pool:
        results = [r for rs in pool.map(run, range(4)) for r in rs]
    wrong = sorted({name for name, value in results if not torch.equal(value, expected[name])})
    assert not wrong, f"threaded results differ: {wrong}"
    before.assert_same(model)


# --------------------------------------------------------------------------- flags


def test_error_inside_a_guarded_call_restores_every_flag_and_the_lock() -> None:
    net = _small_net().train()
    x = _inputs()
    before = ModelSnapshot.take(net)

    def failing(_output: Tensor) -> Tensor:
        assert not net.training, "explain runs the model in eval mode"
        assert not any(p.requires_grad for p in net.parameters())
        raise RuntimeError("boom")

    for method in ("saliency", "gradcam", "deeplift", "lrp"):
        with pytest.raises(RuntimeError, match="boom"):
            explain(net, x, method, target=failing)
        before.assert_same(net)
    # the lock was released: another thread gets through
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(lambda: explain(net, x, "saliency")).result(timeout=30) is not None


def test_nested_guarded_calls_restore_at_the_outermost_exit() -> None:
    net = _small_net().train()
    x = _inputs()
    before = ModelSnapshot.take(net)
    with guard(net) as module:
        assert module is net
        assert not net.training and not any(p.requires_grad for p in net.parameters())
        inner = explain(net, x, "deeplift").attribution
        # the inner call did not restore the outer call's flags
        assert not net.training and not any(p.requires_grad for p in net.parameters())
        with guard(net):
            pass
        assert not net.training
    before.assert_same(net)
    torch.testing.assert_close(inner, explain(net, x, "deeplift").attribution, rtol=0, atol=0)
    # randomization_test explains the model from inside its own guarded call
    result = cnnlens.randomization_test(net, x, "saliency", stages=2, progress=False)
    assert result.spearman.shape == (2, 2)
    before.assert_same(net)


# --------------------------------------------------------------------------- model forms


def test_unwrap_reaches_the_eager_module() -> None:
    net = _small_net()
    loaded = cnnlens.LoadedModel(module=nn.DataParallel(net), name="net", labels=[])
    assert unwrap(loaded) is net
    assert unwrap(nn.DataParallel(nn.DataParallel(net))) is net
    with pytest.raises(InputError, match="expected a torch"):
        unwrap("resnet18")


def test_torch_compile_output_runs_the_eager_module_without_dynamo() -> None:
    from torch._dynamo.utils import counters

    net = _small_net()
    x = _inputs()
    eager = explain(net, x, "deeplift").attribution
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # any deprecation noise from the compile stack
        compiled = torch.compile(net)
    counters.clear()
    for method in ("deeplift", "lrp", "gradcam"):
        before = ModelSnapshot.take(net)
        result = explain(compiled, x, method).attribution
        torch.testing.assert_close(result, explain(net, x, method).attribution, rtol=0, atol=0)
        before.assert_same(net)
    torch.testing.assert_close(explain(compiled, x, "deeplift").attribution, eager)
    assert not counters["frames"], f"dynamo compiled frames: {dict(counters['frames'])}"
    assert not counters["stats"].get("calls_captured"), "dynamo captured calls"


@pytest.mark.parametrize("where", ["in-place", "submodule"])
def test_compiled_parts_inside_the_model_run_eagerly(where: str) -> None:
    from torch._dynamo.utils import counters

    net = _small_net()
    x = _inputs()
    expected = {m: explain(net, x, m).attribution for m in ("deeplift", "guided_backprop")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if where == "in-place":
            net.compile()
        else:
            net[3] = torch.compile(net[3])
    compiled_parts = {
        k: v
        for m in net.modules()
        for k, v in vars(m).items()
        if k in ("forward", "_compiled_call_impl")
    }
    counters.clear()
    for method, attribution in expected.items():
        torch.testing.assert_close(explain(net, x, method).attribution, attribution, rtol=0, atol=0)
    assert not counters["frames"], f"dynamo compiled frames: {dict(counters['frames'])}"
    # the compiled parts are back in place afterwards
    after = {
        k: v
        for m in net.modules()
        for k, v in vars(m).items()
        if k in ("forward", "_compiled_call_impl")
    }
    assert after == compiled_parts and any(v is not None for v in after.values())


def test_data_parallel_on_cpu_equals_eager() -> None:
    net = _small_net()
    x = _inputs()
    parallel = nn.DataParallel(net)
    for method in ("saliency", "guided_backprop", "deeplift", "lrp", "gradcam"):
        torch.testing.assert_close(
            explain(parallel, x, method).attribution,
            explain(net, x, method).attribution,
            rtol=0,
            atol=0,
        )
    # layers are named as in the eager module; the wrapper's names are found too
    assert explain(parallel, x, "gradcam", layer="3").layer == "3"
    assert "module.3" in dict(parallel.named_modules())
    assert explain(parallel, x, "gradcam", layer="module.3").layer == "3"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = torch.compile(parallel)
    assert explain(compiled, x, "gradcam", layer="_orig_mod.module.3").layer == "3"


def test_distributed_data_parallel_equals_eager() -> None:
    """A one-process gloo group, in memory: the wrapper is built but never run."""
    import torch.distributed as dist

    net = _small_net()
    x = _inputs()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(net)
        for method in ("deeplift", "lrp", "gradcam"):
            torch.testing.assert_close(
                explain(wrapped, x, method).attribution,
                explain(net, x, method).attribution,
                rtol=0,
                atol=0,
            )
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- TorchScript


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return _randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).eval()


@pytest.fixture(scope="module")
def scripted() -> dict[str, nn.Module]:
    net = _resnet()
    x = _inputs(1, 32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is deprecated")  # TorchScript, upstream
        return {
            "eager": net,
            "script": torch.jit.script(net),
            "trace": torch.jit.trace(net, x),
        }


EXACT_ON_TORCHSCRIPT: dict[str, dict[str, object]] = {
    "saliency": {},
    "smoothgrad": {"samples": 4, "seed": 0},
    "input_x_gradient": {},
    "integrated_gradients": {"steps": 8},
    "occlusion": {"window": 8, "stride": 8},
}


@pytest.mark.parametrize("form", ["script", "trace"])
@pytest.mark.parametrize("method", sorted(EXACT_ON_TORCHSCRIPT))
def test_gradient_and_forward_methods_on_torchscript_equal_eager(
    scripted: dict[str, nn.Module], form: str, method: str
) -> None:
    x = _inputs(1, 32)
    options = EXACT_ON_TORCHSCRIPT[method]
    model = scripted[form]
    before = ModelSnapshot.take(model)
    with warnings.catch_warnings():
        # 8 integration points on a random ResNet: the gap is reported, the same in both
        warnings.simplefilter("ignore", cnnlens.CompletenessWarning)
        result = explain(model, x, method, **options).attribution  # type: ignore[arg-type]
        eager = explain(scripted["eager"], x, method, **options).attribution  # type: ignore[arg-type]
    torch.testing.assert_close(result, eager, rtol=0, atol=0)  # measured: bitwise equal
    before.assert_same(model)


def _intercepting_methods() -> list[str]:
    return [m for m in cnnlens.METHODS if m not in EXACT_ON_TORCHSCRIPT]


@pytest.mark.parametrize("form", ["script", "trace"])
def test_intercepting_methods_refuse_torchscript_with_the_reason(
    scripted: dict[str, nn.Module], form: str
) -> None:
    x = _inputs(1, 32)
    model = scripted[form]
    for method in _intercepting_methods():
        with pytest.raises(InputError, match="TorchScript") as info:
            explain(model, x, method)
        message = str(info.value)
        assert method in message and "intercept" in message and "arch" in message


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: cnnlens.activations(m, x, "layer4"),
        lambda m, x: cnnlens.factorize(m, x, "layer4", 2),
        lambda m, x: cnnlens.layers(m, 32),
        lambda m, x: cnnlens.receptive_field(m, "layer4", 32),
        lambda m, x: cnnlens.cam_model(m, "layer4", 3, input_size=(32, 32)),
        lambda m, x: cnnlens.randomization_test(m, x, "saliency", stages=1, progress=False),
        lambda m, x: cnnlens.visualize(m, "layer4:0", steps=1, size=(32, 32)),
    ],
    ids=["activations", "factorize", "layers", "receptive_field", "cam_model", "random", "vis"],
)
def test_hooking_calls_refuse_torchscript(
    scripted: dict[str, nn.Module], call: Callable[[nn.Module, Tensor], object]
) -> None:
    with pytest.raises(InputError, match="TorchScript"):
        call(scripted["script"], _inputs(1, 32))


def test_forward_only_calls_run_on_torchscript(scripted: dict[str, nn.Module]) -> None:
    x = _inputs(1, 32)
    explanation = explain(scripted["eager"], x, "saliency")
    for form in ("script", "trace"):
        model = scripted[form]
        scores = cnnlens.deletion_insertion(model, x, explanation, steps=4, progress=False)
        eager = cnnlens.deletion_insertion(
            scripted["eager"], x, explanation, steps=4, progress=False
        )
        torch.testing.assert_close(scores.deletion_curve, eager.deletion_curve)
        image = cnnlens.visualize(model, 3, steps=2, size=(32, 32), progress=False)
        torch.testing.assert_close(
            image, cnnlens.visualize(scripted["eager"], 3, steps=2, size=(32, 32), progress=False)
        )


def test_the_lock_is_weakly_keyed() -> None:
    from cnnlens import _guard

    net = _small_net()
    explain(net, _inputs(), "saliency")
    assert net in _guard._STATES
    gc.collect()  # models of earlier tests still waiting in reference cycles go first
    count = len(_guard._STATES)
    gone = weakref.ref(net)
    del net
    gc.collect()
    assert gone() is None
    assert len(_guard._STATES) == count - 1


def test_guard_restores_per_module_flags_also_after_an_error() -> None:
    model = torchvision.models.resnet18(weights=None)
    model.train()
    model.layer2.eval()
    model.fc.weight.requires_grad_(False)
    training = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    with guard(model):
        assert not any(m.training for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
    assert [m.training for m in model.modules()] == training
    assert [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(KeyError), guard(model):
        raise KeyError("inside")
    assert [m.training for m in model.modules()] == training
    assert [p.requires_grad for p in model.parameters()] == flags


def test_cli_refuses_torchscript_for_intercepting_methods_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnlens.cli import main

    path = tmp_path / "small.pt"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is deprecated")
        torch.jit.script(_small_net().eval()).save(str(path))
    capsys.readouterr()
    common = ["explain", "cat", "--model", str(path)]
    assert main([*common, "--method", "deeplift", "-o", str(tmp_path / "d.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TorchScript" in err and "--arch" in err
    assert main([*common, "--method", "saliency", "-o", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").exists()


def test_guard_restores_flags_changed_inside_and_those_of_shared_parts() -> None:
    """A module held in two places and a parameter tied between two layers are one flag
    each; flags that code inside the guarded call changed are put back as they were."""
    torch.manual_seed(0)
    shared = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
    tied = nn.Linear(4, 4)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), shared, nn.ReLU(), shared, nn.Flatten(1), tied
    )
    head = nn.Linear(4, 4)
    head.weight = tied.weight
    model.append(head)
    model.train()
    shared[1].eval()
    tied.bias.requires_grad_(False)
    training = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    with guard(model):
        assert not any(m.training for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
        model[1].train()  # what a user's forward or target might do
        head.weight.requires_grad_(True)
    assert [m.training for m in model.modules()] == training
    assert [p.requires_grad for p in model.parameters()] == flags


def test_a_refused_torchscript_part_leaves_the_model_and_its_lock() -> None:
    """A model with one scripted part: refused by work that intercepts, at the outermost
    entry (nothing changed, the lock free for other threads) and inside a guarded call
    (the outer call's flags stand until its own exit)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is deprecated")  # TorchScript, upstream
        scripted = torch.jit.script(nn.ReLU())
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), scripted, nn.BatchNorm2d(4)).train()
    before = ModelSnapshot.take(model)

    with pytest.raises(InputError, match="TorchScript"), guard(model, needs="deeplift"):
        pass
    before.assert_same(model)

    def enter_and_leave() -> bool:
        with guard(model) as module:
            return module is model

    with ThreadPoolExecutor(1) as pool:  # the lock was released: another thread enters
        assert pool.submit(enter_and_leave).result(timeout=10)
    with guard(model):
        with pytest.raises(InputError, match="TorchScript"), guard(model, needs="lrp"):
            pass
        assert not model.training and not any(p.requires_grad for p in model.parameters())
    before.assert_same(model)


def test_a_refusal_keeps_no_reference_to_the_model() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is deprecated")  # TorchScript, upstream
        model = nn.Sequential(nn.Conv2d(3, 4, 3), torch.jit.script(nn.ReLU()))
    gone = weakref.ref(model)
    with pytest.raises(InputError, match="TorchScript"), guard(model, needs="deeplift"):
        pass
    del model
    gc.collect()
    assert gone() is None


def test_tracing_puts_its_hooks_on_only_while_it_holds_the_lock() -> None:
    # A thread that holds the model (a long explanation, a deep copy for a background job)
    # must not see the hooks of a trace waiting for its turn: they would record that
    # thread's calls, and a copy made then would keep them.
    import threading

    from cnnlens._hooks import count_hooks
    from cnnlens._trace import trace_calls

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    seen: list[int] = []
    calls: list[object] = []
    with guard(model):
        tracer = threading.Thread(
            target=lambda: calls.append(trace_calls(model, torch.ones(1, 3, 8, 8)))
        )
        tracer.start()
        tracer.join(timeout=0.5)  # it blocks on the lock; before the fix its hooks were on
        assert tracer.is_alive()
        seen.append(count_hooks(model))
    tracer.join(timeout=30)
    assert not tracer.is_alive()
    assert seen == [0]
    assert [c.name for c in calls[0]] == ["0", "1"]  # type: ignore[attr-defined]
    assert count_hooks(model) == 0

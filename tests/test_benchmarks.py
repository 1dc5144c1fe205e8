"""The benchmark harness keeps working: every case (each method of ``cnnlens.METHODS``, its
floor and its peers) runs one round on a tiny model and makes one table line; the header
names the allocator; the other scripts run their parts and explain every option."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import harness
import method_cases as cases


class _Tiny(nn.Module):
    """Conv-BN-ReLU-conv-ReLU, global pooling, a linear classifier (flattened by a function,
    as torchvision does: captum's LRP has no rule for ``nn.Flatten``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(torch.flatten(self.pool(self.features(x)), 1))
        return out


def test_every_case_runs_one_round_and_makes_a_table_line() -> None:
    s = cases.setup("tiny", 2, 16, module=_Tiny().eval(), samples=2, rows=4, window=8, stride=8)
    all_cases = cases.smoke_cases(s) + cases.method_cases(s, heavy=cases.heavy_setup(s, 1), steps=2)
    # peak memory (a garbage collection per entry: slow in a big process) on two cases only
    measured = {"saliency", "scorecam"}
    results = [harness.run_case(c, rounds=1, memory=c.method in measured) for c in all_cases]
    for result in results:
        assert not result.ours.error, (result.case.method, result.ours.error)
        assert len(result.floor.cpu) == len(result.ours.wall) == 1
        if result.case.method in measured and sys.platform == "linux":
            assert result.ours.memory is not None and result.ours.memory >= 0
        for peer in result.peers:
            assert not peer.error, (result.case.method, peer.name, peer.error)
        if result.bound is not None:
            assert not result.bound.error, (result.case.method, result.bound.error)
            assert len(result.bound.cpu) == 1
        if result.case.goal is not None:
            assert result.ok in (True, False)
    bounded = {(r.case.method, r.case.note) for r in results if r.bound is not None}
    assert bounded == {
        ("deconvnet", ""),
        ("guided_backprop", ""),
        ("deeplift", ""),
        *(("lrp", composite) for composite in cases.COMPOSITES),
    }
    # On this net of nn.ReLU modules every peer computes what cnnlens does, but for
    # captum's LRP (epsilon everywhere, listed beside epsilon-plus): the check is on, and
    # the peers are set up for the same computation (captum's Saliency without abs, zennit's
    # box as cnnlens').
    compared = [r for r in results if r.case.compared is not None]
    assert {r.case.method for r in compared} == {
        "saliency",
        "input_x_gradient",
        "deconvnet",
        "guided_backprop",
        "deeplift",
        "lrp",
        "guided_gradcam",
    }
    for result in compared:
        for peer in result.peers:
            assert peer.agreement is not None, (result.case.method, peer.name)
            same = peer.agreement >= harness.AGREES
            assert same == ("captum LRP" not in peer.name), (peer.name, peer.agreement)
    lines = harness.table(results)
    assert len(lines) == 2 + len(results)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    text = harness.markdown(results, harness.environment())
    assert "How to read it" in text and "load average" in text and "memory allocator" in text


def test_the_header_names_the_memory_allocator_and_its_settings() -> None:
    """Preloading tcmalloc or raising glibc's thresholds moves every line: the header
    says which allocator and which settings the figures were measured with."""
    glibc = harness.memory_allocator({"PATH": "/usr/bin"})
    assert glibc.endswith("malloc, default settings")
    tuned = harness.memory_allocator(
        {"MALLOC_TRIM_THRESHOLD_": "1073741824", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    )
    assert tuned.endswith(
        "malloc, GLIBC_TUNABLES=glibc.malloc.hugetlb=1, MALLOC_TRIM_THRESHOLD_=1073741824"
    )
    preloaded = harness.memory_allocator(
        {"LD_PRELOAD": "/usr/lib/libfoo.so /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"}
    )
    assert preloaded == "libtcmalloc_minimal.so.4, default settings"


def test_a_peer_with_another_result_is_marked() -> None:
    """A peer whose rule does not apply to the model computes less: its line says so."""
    grid = torch.arange(12.0).view(1, 3, 2, 2) - 5
    floor = harness.Entry("floor", lambda: None)
    ours = harness.Entry("cnnlens", lambda: grid)
    same = harness.Entry("scaled", lambda: 2 * grid)  # the same map up to a scale
    other = harness.Entry("other", lambda: grid.abs())
    case = harness.Case(
        "m",
        "tiny",
        floor,
        ours,
        [same, other, harness.Entry("fails", None, "no")],
        compared=lambda out: out,
    )
    result = harness.run_case(case, rounds=1, memory=False)
    scaled, different, failed = result.peers
    assert scaled.agreement == pytest.approx(1.0) and failed.agreement is None
    assert different.agreement is not None and different.agreement < harness.AGREES
    line = harness.table([result])[2]
    assert "cosine 1.000" in line
    assert f"**not the same result** (cosine to cnnlens' {different.agreement:.3f})" in line
    # results of different sizes, or a zero map, cannot be compared
    assert harness.cosine(grid, grid.flatten()[:5]) != harness.cosine(grid, grid.flatten()[:5])
    assert harness.cosine(grid, torch.zeros_like(grid)) != 0.0
    # without a comparison nothing is said
    plain = harness.run_case(dataclasses.replace(case, compared=None), rounds=1, memory=False)
    assert all(p.agreement is None for p in plain.peers)
    assert "cosine" not in harness.table([plain])[2]


def test_a_failing_peer_is_reported_not_timed() -> None:
    def fails() -> None:
        raise RuntimeError("cannot do this\nmore")

    floor = harness.Entry("floor", lambda: None)
    case = harness.Case("m", "tiny", floor, floor, [harness.Entry("peer", fails)])
    result = harness.run_case(case, rounds=2, memory=False)
    assert result.peers[0].error == "RuntimeError: cannot do this"
    assert result.peers[0].cpu == () and len(result.ours.cpu) == 2
    assert "peer: fails (RuntimeError: cannot do this)" in harness.table([result])[2]
    with pytest.raises(ValueError):
        harness.run_case(case, rounds=0)


def test_a_budget_adds_rounds_to_a_fast_case() -> None:
    # two entries of about a millisecond: six rounds stay far below one second of budget
    entry = harness.Entry("sleep", lambda: time.sleep(0.001))
    case = harness.Case("m", "tiny", entry, entry)
    extended = harness.run_case(case, rounds=2, memory=False, budget=1.0, max_rounds=6)
    assert len(extended.ours.cpu) == len(extended.floor.wall) == 6
    plain = harness.run_case(case, rounds=2, memory=False)
    assert len(plain.ours.cpu) == 2
    no_warmup = harness.run_case(case, rounds=2, warmup=0, memory=False, budget=1.0)
    assert len(no_warmup.ours.cpu) == 2  # (its memory is measured in the last round)


def test_the_dataset_cases_run() -> None:
    results = [
        harness.run_case(c, rounds=1, memory=False)
        for c in cases.dataset_cases(items=64, batch=32, rows=2000)
    ]
    assert [r.case.method for r in results] == ["extract_features", "top_patches", "nearest (IVF)"]
    assert all(not r.ours.error and r.ok in (True, False) for r in results)


@pytest.mark.skipif(harness.peak_memory(lambda: None) is None, reason="needs /proc/self")
@pytest.mark.parametrize("warmup", [0, 1])
def test_peak_memory_sees_a_torch_tensor(warmup: int) -> None:
    """16 MiB of torch CPU memory (invisible to tracemalloc) shows in the peak, whether it
    is measured in the timed round (no warm-up) or in a call of its own."""
    entry = harness.Entry("16 MiB", lambda: torch.ones(2**22))
    case = harness.Case("m", "none", harness.Entry("nothing", lambda: None), entry)
    result = harness.run_case(case, rounds=1, warmup=warmup)
    assert result.ours.memory is not None and result.floor.memory is not None
    assert 15 * 2**20 <= result.ours.memory <= 64 * 2**20
    assert result.floor.memory <= 4 * 2**20


def test_each_round_runs_the_entries_in_a_new_order() -> None:
    """A rotation keeps neighbours: each entry would always follow the same one."""
    orders = [harness._round_order(5, r) for r in range(30)]
    assert all(sorted(order) == list(range(5)) for order in orders)
    assert orders == [harness._round_order(5, r) for r in range(30)]  # a fixed seed
    predecessors = {order[order.index(0) - 1] for order in orders if order[0] != 0}
    assert len(predecessors) == 4


def _timed(name: str, seconds: list[float]) -> harness.Timing:
    return harness.Timing(name, tuple(seconds), tuple(seconds))


def test_the_interval_pairs_rounds_and_says_when_a_verdict_is_within_noise() -> None:
    # rounds whose load varies 2x: a method that always takes 1.02x the floor of its own
    # round has a point interval when rounds are paired; an unpaired bootstrap would not
    loads = [1.0, 2.0, 1.3, 1.7, 1.1, 1.9, 1.5, 1.2]
    floor = _timed("floor", loads)
    goal = harness.Goal("≤ 1.05× floor", lambda r: r.ratio(r.ours) <= 1.05, limit=lambda r: 1.05)
    case = harness.Case("m", "tiny", harness.Entry("f", None), harness.Entry("o", None), goal=goal)
    steady = harness.Result(case, floor, _timed("ours", [1.02 * t for t in loads]), ())
    span = steady.interval(steady.ours)
    assert span is not None and span[0] == pytest.approx(1.02) and span[1] == pytest.approx(1.02)
    assert steady.ok and not steady.within_noise
    assert harness._verdict(steady) == "✔"
    # the same medians with noise of its own per round: the interval reaches across 1.05
    jitter = [1.12, 0.93, 1.08, 0.97, 1.1, 0.95, 1.06, 0.99]
    noisy = harness.Result(
        case, floor, _timed("ours", [t * j for t, j in zip(loads, jitter, strict=True)]), ()
    )
    low, high = noisy.interval(noisy.ours) or (0.0, 0.0)
    assert low <= noisy.ratio(noisy.ours) <= high and low < 1.05 < high
    assert noisy.within_noise
    assert harness._verdict(noisy).endswith("(within noise)")
    assert "(within noise)" in harness.table([noisy])[2] and "<br>(" in harness.table([noisy])[2]
    # far off: decided
    slow = harness.Result(
        case, floor, _timed("ours", [2 * t * j for t, j in zip(loads, jitter, strict=True)]), ()
    )
    assert not slow.ok and not slow.within_noise and harness._verdict(slow) == "✘"
    assert harness.summary([steady, noisy, slow]) == (
        "Goals: 1 of 3 met (0 within noise), 2 missed (1 within noise)."
    )
    # too few rounds for an interval
    short = harness.Result(case, _timed("floor", loads[:3]), _timed("ours", loads[:3]), ())
    assert short.interval(short.ours) is None and not short.within_noise
    assert harness.summary([steady, short]).endswith(
        "; 1 of these verdicts have no interval (under 5 rounds)."
    )


@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon_alpha2_beta1"])
def test_the_lrp_bound_counts_the_transposes_the_rules_run(
    monkeypatch: pytest.MonkeyPatch, composite: str
) -> None:
    # The bound plans each layer's transposed convolutions from the net's structure (gamma
    # needs one where a rectifier follows the layer, two where a residual sum does); the
    # rules decide from the values. On a ResNet both must count the same calls.
    import torchvision

    import bounds
    from cnnlens.attribution.lrp._affine import Affine

    module = torchvision.models.resnet18(num_classes=10).eval()
    s = cases.setup("resnet18", 1, 32, module=module)
    layers = bounds._layers(s)
    names = {m: n for n, m in module.named_modules()}
    rectified = {names[layer.module] for layer in layers if layer.rectified}
    assert rectified == {"conv1"} | {f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2)}
    planned = sum(len(parts) for _, _, parts, _ in bounds._plan(s, composite))
    calls: list[str] = []
    original = Affine._transpose

    def counted(
        self: Affine, grad: torch.Tensor, weight: torch.Tensor, like: torch.Tensor
    ) -> torch.Tensor:
        calls.append(self.name)
        return original(self, grad, weight, like)

    monkeypatch.setattr(Affine, "_transpose", counted)
    cases._explain(s, "lrp", composite=composite)()
    assert len(calls) == planned


def test_the_allocator_benchmark_selects_measures_and_tabulates() -> None:
    """``bench_allocator.py``: each child gets exactly its allocator's settings, a child's
    measurement has every entry, and the table gives ranges over processes and × F of the
    same process."""
    import bench_allocator

    found = bench_allocator.allocators()
    assert found["glibc, defaults"] == {}
    assert found["glibc, thresholds raised"]["MALLOC_TRIM_THRESHOLD_"] == "1073741824"
    env = bench_allocator._child_env(found["glibc, thresholds raised"])
    assert env["MALLOC_MMAP_THRESHOLD_"] == "1073741824" and "LD_PRELOAD" not in env
    outer = {"LD_PRELOAD": "libtcmalloc_minimal.so.4", "MALLOC_ARENA_MAX": "2", "HOME": "/h"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in outer.items():
            patch.setenv(key, value)
        clean = bench_allocator._child_env({})
    assert clean["HOME"] == "/h" and "LD_PRELOAD" not in clean and "MALLOC_ARENA_MAX" not in clean

    measured = bench_allocator.measure("resnet18", 1, 32, 1, ["saliency", "lrp:epsilon_plus"])
    assert set(measured) == {"F", "saliency", "lrp:epsilon_plus"}

    def run(f: float, lrp: float, faults: int) -> dict[str, dict[str, float]]:
        return {"F": {"ms": f, "faults": 0}, "lrp": {"ms": lrp, "faults": faults}}

    lines = bench_allocator.table({"a": [run(10, 20, 5), run(12, 30, 7)], "b": [run(8, 16, 1)]})
    assert lines[0] == "| allocator | F | lrp | page faults a call |"
    assert lines[2] == "| a | 10–12 | 20–30 (2.00–2.50) | F 0, lrp 5–7 |"
    assert lines[3] == "| b | 8 | 16 (2.00) | F 0, lrp 1 |"


_SCRIPTS = [
    "run",
    "bench_allocator",
    "bench_occlusion_incremental",
    "bench_occlusion_drill_down",
    "bench_scale",
    "pointing_game",
    "randomization",
    "trust",
]


@pytest.mark.parametrize("script", _SCRIPTS)
def test_every_benchmark_script_explains_itself_and_each_option(
    script: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--help`` shows the script's whole docstring and a line of help for every option
    (of every subcommand)."""
    module = importlib.import_module(script)
    made: list[argparse.ArgumentParser] = []
    parse = argparse.ArgumentParser.parse_args

    def recorded(parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        made.append(parser)
        return parse(parser, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", recorded)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--help"])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    assert stopped.value.code in (0, None)
    shown = " ".join(capsys.readouterr().out.split())
    assert module.__doc__ is not None
    assert " ".join(module.__doc__.split()[-12:]) in shown  # the docstring's end, not cut
    (parser,) = made
    parsers = [parser] + [
        sub
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for sub in action.choices.values()
    ]
    for each in parsers:
        for action in each._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, (script, action.option_strings)

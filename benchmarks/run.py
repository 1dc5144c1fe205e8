"""Run the benchmark and write the table: every method of ``cnnlens.METHODS`` plus feature
visualization, against its floor and the peers, in one process.

    python benchmarks/run.py --out docs/benchmarks.md            (make bench)
    python benchmarks/run.py --quick --out out/benchmarks-quick.md   (make bench-quick)
    python benchmarks/run.py --only lrp --rounds 1               (a subset, printed)

Full: resnet50 (batch 8, 224 px; Score-CAM and occlusion on its first image) and the
bundled EfficientNet-Lite0 (batch 1, 224 px), at least 3 timed rounds (more, up to 400,
while a case's timed rounds have taken under 24 s: the fast cases, whose medians need
them), SmoothGrad/IG with 16 samples, occlusion with a 32 px window at stride 8 (625
windows), the dataset tools. ``--rounds N``: exactly N rounds.
Quick (under 5 minutes on an idle 2-core machine): EfficientNet-Lite0 only at 128 px,
at least 2 rounds (more, up to 400, while a case has run under 6 s), 8 samples, stride 16,
no dataset tools.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# A peer's progress bar (pytorch-grad-cam's Score-CAM) would be drawn into every timed call
# and the log; cnnlens' own calls run with progress off.
os.environ.setdefault("TQDM_DISABLE", "1")

from harness import (  # noqa: E402
    Case,
    Result,
    environment,
    load_average,
    markdown,
    run_case,
    script_parser,
    set_threads,
)
from method_cases import dataset_cases, heavy_setup, method_cases, setup, smoke_cases  # noqa: E402


@dataclass(frozen=True)
class Profile:
    models: tuple[tuple[str, int, int], ...]  # (model, batch, size)
    heavy_batch: int  # images for Score-CAM and occlusion
    heavy_rounds: int  # their timed rounds, without warm-up (each is minutes of forwards)
    rounds: int  # at least
    budget: float  # seconds: more rounds (up to max_rounds) while a case's rounds took less
    max_rounds: int
    samples: int  # SmoothGrad samples, IG steps
    steps: int  # feature-visualization steps
    stride: int  # occlusion stride (window 32)
    dataset: bool


PROFILES = {
    "full": Profile(
        (("resnet50", 8, 224), ("efficientnet_lite0", 1, 224)), 1, 1, 3, 24.0, 400, 16, 16, 8, True
    ),
    "quick": Profile((("efficientnet_lite0", 1, 128),), 1, 1, 2, 6.0, 400, 8, 8, 16, False),
}

NOTES = [
    "Parameters are frozen (`requires_grad=False`) for every row: nobody here needs their "
    "gradients, and a peer that calls `loss.backward()` would otherwise pay for them.",
    "captum's DeepLift refuses torchvision's ResNet (one ReLU module called several times "
    "per block); the `one ReLU per call site` row runs it on an equivalent copy.",
    "captum's LRP uses ε rules everywhere (it is listed beside `epsilon_plus`, the nearest "
    "composite); zennit's composites run with its ResNet canonizer (other models: "
    "SequentialMergeBatchNorm).",
    "Feature visualization has no installed peer: lucent (torch-lucent 0.1.8) pins "
    "kornia ≤ 0.4.1 (2020) and pulls IPython, coveralls and pytest-mock into the "
    "environment, so it is not part of the `bench` extra; the naive Adam loop on raw pixels "
    "is the reference instead.",
]


def _cases(profile: Profile) -> list[Callable[[], list[Case]]]:
    """Case builders, one per model (built lazily: one model in memory at a time)."""
    builders: list[Callable[[], list[Case]]] = []
    for model, batch, size in profile.models:

        def build(model: str = model, batch: int = batch, size: int = size) -> list[Case]:
            s = setup(model, batch, size, samples=profile.samples, stride=profile.stride)
            heavy = heavy_setup(s, profile.heavy_batch)
            return smoke_cases(s) + method_cases(
                s, heavy=heavy, heavy_rounds=profile.heavy_rounds, steps=profile.steps
            )

        builders.append(build)
    if profile.dataset:
        builders.append(dataset_cases)
    return builders


def _selected(case: Case, only: str | None) -> bool:
    return only is None or only in case.method or only in (case.note or "")


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--quick", action="store_true", help="the quick profile (Quick, above)")
    parser.add_argument(
        "--only",
        default=None,
        help="only the cases whose method or note contains this text (e.g. lrp, cam, gamma)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="exactly this many timed rounds per case (default: the profile's, more for fast cases)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME:BATCH:SIZE",
        help="instead of the profile's models (repeatable), e.g. resnet18:2:112",
    )
    args = parser.parse_args(argv)
    name = "quick" if args.quick else "full"
    profile = PROFILES[name]
    if args.model:
        models = tuple(
            (m, int(b), int(px)) for m, b, px in (spec.split(":") for spec in args.model)
        )
        profile = dataclasses.replace(profile, models=models)
        name += " with --model " + " ".join(args.model)
    rounds = args.rounds or profile.rounds
    budget = 0.0 if args.rounds else profile.budget
    set_threads(args.threads)
    env = environment()  # the load average at the start
    start, start_cpu = time.perf_counter(), time.process_time()
    results: list[Result] = []
    for build in _cases(profile):
        for case in build():
            if not _selected(case, args.only):
                continue
            print(f"== {case.method} {case.note} on {case.model}", file=sys.stderr, flush=True)
            results.append(
                run_case(case, rounds=rounds, budget=budget, max_rounds=profile.max_rounds)
            )
    minutes = (time.perf_counter() - start) / 60
    cpu_minutes = (time.process_time() - start_cpu) / 60
    env["load average at the end"] = load_average()
    command = "make bench-quick" if args.quick else "make bench"
    run = (
        f"Written by `{command}` (`benchmarks/run.py{' --quick' if args.quick else ''}`, "
        f"profile `{name}`: {', '.join(f'{m} batch {b} at {s} px' for m, b, s in profile.models)}, "
        f"{rounds} timed rounds after one warm-up"
        + (
            f", more (up to {profile.max_rounds}) while a case has run under {budget:g} s"
            if budget
            else ""
        )
        + "; Score-CAM and occlusion "
        f"{profile.heavy_rounds} round, no warm-up) in {minutes:.0f} min "
        f"({cpu_minutes:.1f} min of CPU time)."
    )
    text = markdown(results, env, run=run, notes=NOTES)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the architecture matrix and write ``docs/architectures.md``.

Every classification CNN builder of ``torchvision.models`` (and, with ``--timm``, a few timm
CNNs) × every method of ``cnnlens.METHODS``, with the checks of ``tests/_matrix.py``: runs,
model untouched, an item alone equals the same item in a batch, and each method's axiom
(DeepLIFT summation-to-delta, integrated-gradients completeness, LRP conservation on a
bias-free copy), all in float64 on random non-degenerate weights.

CPU-heavy: run it at the lowest priority, one thread::

    OMP_NUM_THREADS=1 nice -n 19 python scripts/architecture_matrix.py --timm

``--only NAME ...`` restricts the architectures; ``--budget SECONDS`` stops starting new
architectures after that much CPU time (the table then lists what was not run). Each cell
is appended to ``--cells FILE`` (JSON lines) as it finishes; the table is rendered from that
file, the latest run of each cell winning, so a run can be resumed or partly redone
(``--skip-done``, ``--render-only``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from tests._matrix import (  # noqa: E402
    ARCHITECTURE_OPTIONS,
    DEEPLIFT_TOLERANCE,
    FAMILIES,
    IG_TOLERANCE,
    LRP_TOLERANCE,
    TIMM_ARCHITECTURES,
    Cell,
    cells,
    describe,
    family,
    methods,
    torchvision_architectures,
)

import cnnlens  # noqa: E402
from harness import checkout_commit  # noqa: E402

SYMBOLS = {
    "exact": "exact",
    "complete": "complete",
    "incomplete": "*incomplete, warned*",
    "conserving": "conserving",
    "runs": "runs",
    "zero": "zero",
    "refuses": "refuses",
    "fails": "**FAILS**",
}


def _entry(cell: Cell) -> str:
    text = describe(cell)
    return text.replace(cell.status, SYMBOLS.get(cell.status, cell.status), 1)


def _table(rows: dict[str, dict[str, Cell]], names: Sequence[str]) -> list[str]:
    header = ["architecture", *methods()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        row = rows.get(name)
        if row is None:
            lines.append(f"| {name} | " + " | ".join("not run" for _ in methods()) + " |")
            continue
        lines.append(f"| {name} | " + " | ".join(_entry(row[m]) for m in methods()) + " |")
    return lines


def _failures(rows: dict[str, dict[str, Cell]]) -> list[str]:
    lines = []
    for name, row in rows.items():
        for method, cell in row.items():
            if not cell.ok:
                lines.append(f"- `{name}` × `{method}`: {cell.note}")
    return lines or ["None."]


def _notes(rows: dict[str, dict[str, Cell]]) -> list[str]:
    lines = []
    for name, row in rows.items():
        for method, cell in row.items():
            if cell.ok and cell.status in ("zero", "refuses"):
                lines.append(f"- `{name}` × `{method}`: {cell.status}: {cell.note[:160]}")
            elif cell.status == "incomplete":
                lines.append(
                    f"- `{name}` × `{method}`: incomplete, warned: {cell.error:.1%} from "
                    f"complete with {cell.detail}; the `CompletenessWarning` was issued and "
                    "`extras['delta']` is the true gap"
                )
    return lines or ["None."]


def render(
    rows: dict[str, dict[str, Cell]],
    names: Sequence[str],
    timm_rows: dict[str, dict[str, Cell]],
    seconds: float,
    commits: Counter[str] | None = None,
) -> str:
    worst: dict[str, float] = {}
    for row in [*rows.values(), *timm_rows.values()]:
        for method, cell in row.items():
            if cell.error is not None and cell.status in ("exact", "complete", "conserving"):
                worst[method] = max(worst.get(method, 0.0), cell.error)
    lines = [
        "# Architectures",
        "",
        "Every classification CNN builder of `torchvision.models` "
        f"({len(names)} builders; the transformers `vit_*`, `swin_*`, `maxvit_t` are not "
        "CNNs and not covered) × every method of `cnnlens.METHODS`, checked by "
        "`scripts/architecture_matrix.py` (the same checks as `tests/test_architectures.py`, "
        "whose default run covers one architecture per family and whose `slow` run covers "
        f"the whole matrix). cnnlens {cnnlens.__version__}, torch {torch.__version__}, "
        f"{seconds / 60:.0f} CPU minutes; each cell is the latest run of it, measured at "
        + ", ".join(
            f"{c} ({n} cell{'s' if n != 1 else ''})"
            for c, n in (commits or Counter({checkout_commit(): 0})).items()
        )
        + ".",
        "",
        "## What is checked",
        "",
        "Random weights made non-degenerate (BatchNorm running statistics and affine "
        "parameters, LayerNorm affine parameters, every bias and ConvNeXt's layer scales "
        "drawn at random: a fresh ConvNeXt has zero biases and layer scale 1e-6 and is "
        "then nearly scale-invariant in its input, which hides every completeness error; "
        "`tests/_matrix.py`), "
        "float64, the smallest square input each architecture allows at or above 16 px, "
        "two random items. In every cell:",
        "",
        "- the method runs; `cam` may refuse a head that is not global-average-pooling + "
        "linear, with `InputError` (**refuses**);",
        "- no warning (an all-zero result instead gets a `ZeroAttributionWarning`, shown as "
        "**zero**: the documented behaviour, e.g. Grad-CAM whose ReLU removes the whole map "
        "of a random network);",
        "- the model is untouched: parameters, buffers, train flags, `requires_grad`, "
        "gradients, hooks;",
        "- the first item explained alone equals it explained in the batch (1e-6 of the "
        "largest value);",
        f"- DeepLIFT: each item sums to score(x) − score(0) within {DEEPLIFT_TOLERANCE:g} "
        "of the larger of |score(x) − score(0)| and Σ|attribution| (random networks can "
        "have a score that barely changes while the attributions cancel; float64 rounding "
        "is then relative to the attributions) (**exact**);",
        "- integrated gradients at its default (64 Gauss–Legendre points, doubled up to 1024 "
        "for items still more than 1 % off): the sum is within "
        f"{IG_TOLERANCE:.0%} of score(x) − score(0) (**complete**; the steps used are "
        "shown), and `extras['delta']` is that gap; where 1024 points are not enough (a "
        "random network whose score rises and falls many times its net change along the "
        "path), a `CompletenessWarning` must say so, and only then (*incomplete, warned*); "
        "a cell listed under *Cells with their own options* runs with the step count "
        "documented there;",
        "- LRP on a bias-free copy (biases, BatchNorm shifts and means, LayerNorm shifts "
        "set to zero; each BatchNorm's variance set to what it receives, so the signal "
        "neither vanishes nor explodes): with the epsilon rule (1e-9) at every layer the "
        f"relevance sums to the explained logit within {LRP_TOLERANCE:g} relative — every "
        "operation's rule conserves (**conserving**). The default composite "
        "(`epsilon_plus_flat`) is run too, and its deviation shown where above that: its "
        "z+ rule drops the relevance of a neuron that has no positive contribution (as "
        "zennit's does), common in depthwise convolutions at these tiny resolutions.",
        "",
        "Other methods have no axiom to check (**runs**). The number in brackets is the "
        "largest relative error measured over the two items.",
        "",
        "Largest errors measured over the cells that hold their axiom: "
        + ", ".join(f"{m} {e:.1e}" for m, e in sorted(worst.items()))
        + ".",
        "",
        "## torchvision",
        "",
        (
            f"All {len(names)} builders measured."
            if len(rows) >= len(names)
            else f"{len(rows)} of {len(names)} builders measured (one per family first, then "
            "by size); the rest are marked *not run*: the run was stopped for time on a "
            "shared two-core machine. `--cells FILE --skip-done` continues it."
        ),
        "",
        *_table(rows, names),
        "",
    ]
    if timm_rows:
        lines += ["## timm (random init)", "", *_table(timm_rows, list(TIMM_ARCHITECTURES)), ""]
    lines += [
        "## Cells with their own options",
        "",
        "Where a method's default is documented not to suffice on one architecture, its "
        "cell runs with these options instead (the same checks apply):",
        "",
        *(
            f"- `{name}` × `{method}`: "
            + ", ".join(f"`{k}={v!r}`" for k, v in chosen.items())
            + f": {why}."
            for (name, method), (chosen, why) in ARCHITECTURE_OPTIONS.items()
        ),
        "",
        "## Failing cells",
        "",
        *_failures({**rows, **{f"timm/{k}": v for k, v in timm_rows.items()}}),
        "",
        "## All-zero results, refusals and incomplete integrals",
        "",
        *_notes({**rows, **{f"timm/{k}": v for k, v in timm_rows.items()}}),
        "",
    ]
    return "\n".join(lines)


def _run(
    names: Sequence[str],
    source: str,
    budget: float,
    started: float,
    store: Path,
    skip: set[str],
    only: Sequence[str] | None = None,
) -> None:
    commit = checkout_commit()
    for name in names:
        if f"{source}/{name}" in skip:
            continue
        if time.process_time() - started > budget:
            print(f"budget spent; not running {name}", flush=True)
            continue
        for cell in cells([name], source, only=only):
            with store.open("a", encoding="utf-8") as out:
                record = {"source": source, "commit": commit, **dataclasses.asdict(cell)}
                out.write(json.dumps(record) + "\n")
            print(
                f"{source}/{name} {cell.method}: {describe(cell)} {cell.seconds:.1f}s "
                f"{cell.note[:200] if not cell.ok else ''}",
                flush=True,
            )


def _load(
    store: Path,
) -> tuple[dict[str, dict[str, Cell]], dict[str, dict[str, Cell]], float, Counter[str]]:
    """torchvision rows, timm rows, the CPU seconds spent and the commits the shown cells
    were measured at (with their counts), from the cells file."""
    rows: dict[str, dict[str, dict[str, Cell]]] = {"torchvision": {}, "timm": {}}
    measured_at: dict[tuple[str, str, str], str] = {}
    seconds = 0.0
    if store.exists():
        for line in store.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            source = record.pop("source")
            commit = record.pop("commit", "unrecorded")
            cell = Cell(**record)
            rows[source].setdefault(cell.architecture, {})[cell.method] = cell
            measured_at[source, cell.architecture, cell.method] = commit
            seconds += cell.seconds
    complete = {
        source: {n: r for n, r in table.items() if set(r) >= set(methods())}
        for source, table in rows.items()
    }
    commits = Counter(
        measured_at[source, name, method]
        for source, table in complete.items()
        for name, row in table.items()
        for method in row
    )
    return complete["torchvision"], complete["timm"], seconds, commits


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="architectures to run (default: all)")
    parser.add_argument("--timm", action="store_true", help="also the timm CNNs")
    parser.add_argument("--budget", type=float, default=float("inf"), help="CPU seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "architectures.md")
    parser.add_argument("--cells", type=Path, default=Path("architecture_cells.jsonl"))
    parser.add_argument("--skip-done", action="store_true", help="skip finished architectures")
    parser.add_argument("--render-only", action="store_true", help="only write the table")
    parser.add_argument("--methods", nargs="*", help="redo only these methods' cells")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = torchvision_architectures()
    if not args.render_only:
        done = set()
        if args.skip_done:
            rows, timm_rows, _, _ = _load(args.cells)
            done = {f"torchvision/{n}" for n in rows} | {f"timm/{n}" for n in timm_rows}
        started = time.process_time()
        order = args.only or _order(names)
        families = len([n for n in order if n in FAMILIES])
        # every family first, then timm, then the other torchvision variants
        run = functools.partial(
            _run,
            budget=args.budget,
            started=started,
            store=args.cells,
            skip=done,
            only=args.methods,
        )
        run(order[:families], "torchvision")
        if args.timm:
            run(TIMM_ARCHITECTURES, "timm")
        run(order[families:], "torchvision")
    rows, timm_rows, seconds, commits = _load(args.cells)
    ordered = sorted(names, key=lambda n: (family(n), _size_rank(n), n))
    args.out.write_text(render(rows, ordered, timm_rows, seconds, commits), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def _size_rank(name: str) -> int:
    return _order(torchvision_architectures()).index(name)


def _order(names: Sequence[str]) -> list[str]:
    """The family representatives first, then the rest smallest first (by parameter
    count), so a run stopped by its budget has covered every family."""
    first = sorted((n for n in FAMILIES if n in names), key=_parameters)
    rest = [n for n in names if n not in FAMILIES]
    return first + sorted(rest, key=_parameters)


@functools.cache
def _parameters(name: str) -> int:
    import torchvision

    # the published weights' metadata (nothing is downloaded)
    return int(torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"])


if __name__ == "__main__":
    raise SystemExit(main())

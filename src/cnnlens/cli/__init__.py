"""The ``cnnlens`` command: a thin shell over the API.

Each command lives in a module of this package with ``register(subparsers)``; the module
list below is the whole registry. Exit codes: 0 success, 2 bad usage or bad input (one
line on stderr), 1 anything else.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from contextlib import nullcontext

from .._progress import progress_mode
from ..errors import InputError

__all__ = ["main"]

_COMMAND_MODULES = (
    "_models",
    "_layers",
    "_explain",
    "_cam",
    "_behaviour",
    "_visualize",
    "_dataset",
    "_evaluate",
    "_report",
    "_atlas",
    "_serve",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line and exit code 2, as for any other usage error.
        self.exit(2, f"cnnlens: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnlens", description="Open up convolutional networks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(sub)
    for command in sub.choices.values():
        command.add_argument(
            "-q", "--quiet", action="store_true", help="no progress bars on stderr"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with progress_mode(False) if args.quiet else nullcontext():
            code = args.run(args)
    except InputError as exc:
        print(f"cnnlens: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`cnnlens models | head`): not an error of ours.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("cnnlens: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("CNNLENS_DEBUG"):
            raise
        print(
            f"cnnlens: failed: {type(exc).__name__}: {exc} (set CNNLENS_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

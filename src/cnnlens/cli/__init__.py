"""The ``cnnlens`` command: a thin shell over the API.

Each command lives in a module of this package with ``register(subparsers)``; the module
list below is the whole registry. Exit codes: 0 success, 2 bad usage or bad input (one
line on stderr; bare ``cnnlens`` prints the usage and the command list on stderr and
exits 2, as argparse does for a missing command), 1 anything else.

Every path a command writes is an option typed :class:`~._common.Output`: checked when the
arguments are parsed, before any work, and removed again if it was created by a run that
ends in bad input (exit 2), so nothing is left behind.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__
from .._progress import progress_mode
from ..errors import InputError

__all__ = ["main"]

_COMMAND_MODULES = (
    "_models",
    "_layers",
    "_check",
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


_EPILOG = """\
examples:
  cnnlens predict cat
  cnnlens explain cat -m gradcam,lrp -o cat.png
  cnnlens report -o report.html

`cnnlens COMMAND --help` describes a command and its options. Progress bars go to stderr
on a terminal; -q/--quiet turns them off (CNNLENS_PROGRESS=1 forces them on).
"""


class _Formatter(argparse.HelpFormatter):
    """Paragraphs are wrapped, but indented lines (examples) are kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks = []
        for block in text.split("\n\n"):
            lines = block.splitlines()
            if any(line.startswith(" ") for line in lines):
                blocks.append("\n".join(indent + line for line in lines))
            else:
                blocks.append(super()._fill_text(block, width, indent))
        return "\n\n".join(blocks)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        # Options are taken as spelt in full: an abbreviation could silently pick a
        # different option (`report --method` was once read as `--methods`).
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # One line and exit code 2, as for any other usage error.
        self.exit(2, f"cnnlens: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cnnlens",
        description="Open up convolutional networks: explain decisions, look at what layers "
        "and units respond to, and analyse a model over a whole dataset.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"cnnlens {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser, title="commands"
    )
    sub.required = True
    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(sub)
    for command in sub.choices.values():
        command.add_argument(
            "-q", "--quiet", action="store_true", help="no progress bars on stderr"
        )
    return parser


def _outputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Path]:
    """The paths the chosen command will write (its options typed ``Output``)."""
    from ._common import Output

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = sub.choices[args.command]
    values = [getattr(args, a.dest, None) for a in command._actions if isinstance(a.type, Output)]
    return [Path(v) for v in values if v]


@contextmanager
def _plain_warnings() -> Iterator[None]:
    """Warnings a command shows read as one ``cnnlens: warning: ...`` line, not as Python's
    file, line number and source line. Only the text is changed (``formatwarning``): filters,
    ``-W error`` and recording by ``catch_warnings`` work as before."""

    def one_line(message: Warning | str, *_: object, **__: object) -> str:
        return f"cnnlens: warning: {message}\n"

    saved = warnings.formatwarning
    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = saved


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:
        # Answered before the commands' parsers are built: their modules import
        # matplotlib and the rest (about half a second, for one line).
        print(f"cnnlens {__version__}")
        return 0
    from ._common import first_missing, remove_created

    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: their code, returned
        return exc.code if isinstance(exc.code, int) else 2
    created = [new for new in map(first_missing, _outputs(parser, args)) if new is not None]
    try:
        with progress_mode(False) if args.quiet else nullcontext(), _plain_warnings():
            code = args.run(args)
    except InputError as exc:
        remove_created(created)
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

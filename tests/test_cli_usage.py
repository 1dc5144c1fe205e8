"""What a newcomer types: ``-m/--method`` in ``report`` as in ``explain`` and ``evaluate``,
no abbreviated options, messages that name what was typed, ``--help`` texts that agree
with each other and whose examples work offline, and a quick ``--version``."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

import cnnlens.cli
import cnnlens.cli._report as report_command
from cnnlens import sample_images
from cnnlens._report import REPORT_METHODS
from cnnlens.cli import build_parser, main
from cnnlens.cli._common import positive_int

from .conftest import cli_fails


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


COMMANDS = _commands()


# ------------------------------------------------------------------ report -m/--method


@pytest.fixture
def report_methods(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The methods each ``report`` run asks for (the report itself is not built)."""
    seen: list[list[str]] = []

    def build(model: Any, images: Any, **kwargs: Any) -> object:
        seen.append(list(kwargs["methods"]))
        return object()

    monkeypatch.setattr(report_command, "build_report", build)
    monkeypatch.setattr(report_command, "report_html", lambda report: "<html></html>")
    return seen


@pytest.mark.parametrize(
    "flags",
    [
        ["--method", "gradcam", "--method", "saliency"],
        ["-m", "gradcam", "-m", "saliency"],
        ["-m", "gradcam,saliency"],
        ["--methods", "gradcam,saliency"],  # the earlier spelling still works
        ["-m", "gradcam", "--methods", "saliency,gradcam"],
    ],
)
def test_report_takes_every_method_given(
    flags: list[str], tmp_path: Path, report_methods: list[list[str]]
) -> None:
    out = tmp_path / "r.html"
    argv = ["report", "--model", "resnet18", "--random-weights", *flags, "--no-behaviour"]
    assert main([*argv, "-o", str(out)]) == 0
    assert report_methods == [["gradcam", "saliency"]]
    assert out.read_text() == "<html></html>"


def test_report_default_methods(tmp_path: Path, report_methods: list[list[str]]) -> None:
    argv = ["report", "--model", "resnet18", "--random-weights", "-o", str(tmp_path / "r.html")]
    assert main(argv) == 0
    assert report_methods == [list(REPORT_METHODS)]


def test_report_method_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "r.html")
    line = cli_fails(capsys, "report", "-m", "saliency,gradcm", "-o", out)
    assert "unknown method 'gradcm'; did you mean gradcam" in line
    line = cli_fails(capsys, "report", "-m", ",", "-o", out)
    assert line == "cnnlens: error: --method needs a method name"
    assert not (tmp_path / "r.html").exists()


def test_every_command_that_runs_several_methods_takes_m_and_method() -> None:
    for name in ("explain", "evaluate", "report"):
        actions = [a for a in COMMANDS[name]._actions if "--method" in a.option_strings]
        assert len(actions) == 1, name
        assert {"-m", "--method"} <= set(actions[0].option_strings), name
        assert isinstance(actions[0], argparse._AppendAction), name
        assert actions[0].dest == "method" and actions[0].metavar == "M", name


# ------------------------------------------------------------------ no abbreviations


@pytest.mark.parametrize(
    "argv",
    [
        ["explain", "cat", "--meth", "saliency", "-o", "x.png"],
        ["predict", "cat", "--mod", "fashion_cnn"],
        ["filters", "--out", "f.png"],
        ["--vers"],
    ],
)
def test_abbreviated_options_are_refused(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # were an abbreviation taken, what it wrote lands here
    line = cli_fails(capsys, *argv)
    assert "unrecognized arguments" in line or "required" in line, line
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ messages


def test_unknown_option_names_what_was_typed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "x.png")
    line = cli_fails(capsys, "explain", "cat", "-m", "gradcam", "--option", "nosuch=3", "-o", out)
    assert line == (
        "cnnlens: error: --option nosuch=3: nosuch is not an option of gradcam "
        "(it takes no options)"
    )
    line = cli_fails(capsys, "explain", "cat", "-m", "lrp", "--option", "nosuch=3", "-o", out)
    assert line.startswith("cnnlens: error: --option nosuch=3: nosuch is not an option of lrp (")
    assert "(its options: composite, epsilon" in line
    line = cli_fails(capsys, "explain", "cat", "-m", "saliency,lrp", "--samples", "4", "-o", out)
    assert line.startswith("cnnlens: error: --samples is not an option of saliency, lrp ")
    assert "(their options: composite, epsilon" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["explain", "", "-m", "saliency", "-o", "{tmp}/x.png"],
        ["predict", "", "cat"],
        ["check", "-m", "lrp", ""],
        ["evaluate", "", "-o", "{tmp}/eval"],
        ["report", "cat", "", "-o", "{tmp}/r.html"],
        ["activations", "", "-o", "{tmp}/a.png"],
    ],
)
def test_empty_image_argument(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = cli_fails(capsys, *(a.replace("{tmp}", str(tmp_path)) for a in argv))
    assert line == "cnnlens: error: the image path is empty"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["index", "patches", "atlas"])
def test_empty_dataset_argument(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["--layers", "features.relu2"] if command == "atlas" else []
    kind = "p.png" if command == "patches" else "out"
    line = cli_fails(capsys, command, "", *extra, "-o", str(tmp_path / kind))
    assert line.endswith("the dataset is empty: name a folder of pictures or fashion-mnist")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ --help


def _positionals(command: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in command._actions if not a.option_strings]


def test_positionals_are_named_alike() -> None:
    names = {name: [a.metavar for a in _positionals(command)] for name, command in COMMANDS.items()}
    for name in ("predict", "explain", "check", "activations", "neighbors"):
        assert names[name] == ["IMAGE"], name
    for name in ("factorize", "evaluate", "report"):
        assert names[name] == ["IMAGE"], name
        assert _positionals(COMMANDS[name])[0].nargs in ("+", "*"), name
    for name in ("index", "patches", "atlas"):
        assert names[name] == ["DATASET"], name
        help = _positionals(COMMANDS[name])[0].help or ""
        assert help.startswith("a folder of pictures (class sub-folders give labels) or fashion")
    for name, command in COMMANDS.items():
        for action in _positionals(command):
            assert action.metavar and action.metavar.isupper(), (name, action.dest)


def test_counts_are_written_n() -> None:
    """A count is N in every command; a whole number that is not a count is a size."""
    for name, command in COMMANDS.items():
        for action in command._actions:
            if action.type is positive_int:
                assert action.metavar in ("N", "PIXELS", ("H", "W")), (name, action.dest)
            if action.dest in ("top", "k", "steps", "samples", "sample", "limit", "workers"):
                assert action.metavar == "N", (name, action.dest)


def test_descriptions_name_the_positionals_as_they_are_shown() -> None:
    for name, command in COMMANDS.items():
        shown = {a.metavar for a in _positionals(command)}
        for word in re.findall(r"\b(?:IMAGE|DATASET)\b", command.description or ""):
            assert word in shown, (name, word)


def _examples(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("cnnlens ")]


def test_help_examples_use_what_is_there_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every example parses, and names bundled samples and models with bundled weights (or
    --random-weights); only a dataset folder (photos/) is the user's own."""
    monkeypatch.chdir(tmp_path)  # the written paths are checked as they are parsed
    texts = [cnnlens.cli._EPILOG] + [c.epilog or "" for c in COMMANDS.values()]
    examples = [e for text in texts for e in _examples(text)]
    assert len(examples) > 20
    for example in examples:
        args = build_parser().parse_args(example.split("#")[0].split()[1:])
        model = getattr(args, "model", None)
        if model is not None and not args.random_weights:
            assert model in ("efficientnet_lite0", "fashion_cnn"), example
        images = getattr(args, "images", None) or [getattr(args, "image", None) or "cat"]
        for image in images:
            assert image in sample_images() or "@" in image, example


# ------------------------------------------------------------------ --version


def test_version_does_not_build_the_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse() -> None:
        raise AssertionError("--version built the command parsers")

    monkeypatch.setattr(cnnlens.cli, "build_parser", refuse)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"cnnlens {cnnlens.__version__}\n"

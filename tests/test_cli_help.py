"""The command line explains itself: ``--version``, bare ``cnnlens``, and every command's
``--help`` with a description, an example and help for every option."""

from __future__ import annotations

import argparse
import runpy
import sys
import warnings

import pytest

import cnnlens
from cnnlens.cli import build_parser, main


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


COMMANDS = _commands()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cnnlens {cnnlens.__version__}"


def test_python_dash_m_runs_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["cnnlens", "--version"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("cnnlens", run_name="__main__", alter_sys=True)
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"cnnlens {cnnlens.__version__}"


def test_bare_cnnlens_prints_usage_and_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: cnnlens")
    for name in COMMANDS:
        assert f"\n    {name} " in err or f"\n    {name}\n" in err, name
    assert "cnnlens COMMAND --help" in err


def test_contract_commands_are_there() -> None:
    contract = "predict layers explain filters activations factorize index neighbors embed"
    assert set(contract.split()) | {"patches", "visualize", "evaluate", "report"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_explains_itself(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    command = COMMANDS[name]
    assert command.description and len(command.description) > 40, name
    assert f"cnnlens {name}" in f"{command.description}\n{command.epilog or ''}", (
        f"{name}: no example"
    )
    for action in command._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help != argparse.SUPPRESS, (name, action.option_strings)
    assert main([name, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: cnnlens {name}") and command.description[:30] in text


def _options(command: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in command._actions for flag in action.option_strings}


def test_option_names_are_the_same_everywhere() -> None:
    for name, command in COMMANDS.items():
        options = _options(command)
        assert "--quiet" in options and "-q" in options, name
        writes = [a for a in command._actions if "--output" in a.option_strings]
        if writes:
            assert "-o" in writes[0].option_strings, name
        for flag in options:
            # one spelling per idea: --batch-size, --seed, --model, --output, --workers
            assert flag not in ("--batchsize", "--batch_size", "--out", "--outdir", "--jobs")
        if "--batch-size" in options:
            assert options["--batch-size"].dest == "batch_size"
    for name in ("index", "patches"):
        assert {"--batch-size", "--workers", "--limit", "--model"} <= set(_options(COMMANDS[name]))
    for name in ("explain", "evaluate", "report"):
        assert {"-m", "--method"} <= set(_options(COMMANDS[name]))


def test_warnings_of_a_command_read_as_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    original = warnings.formatwarning

    def run(args: argparse.Namespace) -> int:
        seen.append(warnings.formatwarning("few steps", UserWarning, "/src/x.py", 7, "code()"))
        return 0

    import cnnlens.cli._models as models_command

    monkeypatch.setattr(models_command, "run_models", run)
    assert main(["models"]) == 0
    assert seen == ["cnnlens: warning: few steps\n"]
    assert warnings.formatwarning is original

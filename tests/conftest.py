"""Shared fixtures and checks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from cnnlens._hooks import count_hooks

# Two cores on CI: keep each test process to one thread (pytest-xdist runs two processes).
torch.set_num_threads(int(os.environ.get("CNNLENS_TEST_THREADS", "1")))


@dataclass
class ModelSnapshot:
    """Everything `explain` and friends promise to leave as they found it."""

    state: dict[str, torch.Tensor]
    requires_grad: list[bool]
    grads: list[torch.Tensor | None]
    training: list[bool]
    hooks: int
    output: torch.Tensor | None

    @classmethod
    def take(cls, model: nn.Module, probe: torch.Tensor | None = None) -> ModelSnapshot:
        output = None
        if probe is not None:
            with torch.no_grad():
                output = model(probe).detach().clone()
        return cls(
            state={k: v.detach().clone() for k, v in model.state_dict().items()},
            requires_grad=[p.requires_grad for p in model.parameters()],
            grads=[None if p.grad is None else p.grad.detach().clone() for p in model.parameters()],
            training=[m.training for m in model.modules()],
            hooks=count_hooks(model),
            output=output,
        )

    def assert_same(self, model: nn.Module, probe: torch.Tensor | None = None) -> None:
        assert count_hooks(model) == self.hooks, "hooks left on the model"
        assert [m.training for m in model.modules()] == self.training, "training flags changed"
        assert [p.requires_grad for p in model.parameters()] == self.requires_grad
        for p, g in zip(model.parameters(), self.grads, strict=True):
            if g is None:
                assert p.grad is None, "a parameter gradient appeared"
            else:
                assert p.grad is not None and torch.equal(p.grad, g), "a parameter gradient changed"
        state = model.state_dict()
        assert state.keys() == self.state.keys()
        for k, v in self.state.items():
            assert torch.equal(state[k], v), f"{k} changed"
        if probe is not None and self.output is not None:
            with torch.no_grad():
                assert torch.equal(model(probe), self.output), "model output changed"


@pytest.fixture
def untouched() -> type[ModelSnapshot]:
    """Usage: ``snap = untouched.take(model, x)`` ... ``snap.assert_same(model, x)``."""
    return ModelSnapshot


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def cli_fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the ``cnnlens`` command; it must exit 2 with one line on stderr (returned) and
    print nothing else: no traceback, no OS error text."""
    from cnnlens.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlens: error: "), err
    assert "Error:" not in err and "Errno" not in err and "Traceback" not in err, err
    return lines[0]

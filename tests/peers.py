"""Reference libraries (captum, zennit, pytorch-grad-cam, torchcam) for comparison tests.

`make test` installs them (the ``reference`` extra) and sets ``CNNLENS_REQUIRE_REFERENCES=1``;
there, and on any CI (``CI=true``), a missing one fails its tests, so a comparison can never
silently stop running. Elsewhere (a bare checkout) it skips them.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

__all__ = ["on_ci", "peer"]


def on_ci() -> bool:
    """Whether reference libraries are required (CI, or `make test`)."""
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes")
        for name in ("CI", "CNNLENS_REQUIRE_REFERENCES")
    )


def peer(name: str) -> ModuleType:
    """Import reference module ``name``: skip the test when it is missing, fail on CI."""
    if on_ci():
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            pytest.fail(f"reference library {name!r} is missing on CI (or under make test): {exc}")
    return pytest.importorskip(name)

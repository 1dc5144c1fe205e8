"""Exceptions raised for problems the user can fix."""

from __future__ import annotations

__all__ = ["InputError", "ModelLoadError"]


class InputError(ValueError):
    """Bad input from the user: a missing file, an unknown layer, a target of the wrong length.

    The message is one line meant to be shown as is (the CLI prints it and exits with code 2).
    """


class ModelLoadError(InputError):
    """A model could not be loaded (unknown name, weights not available offline, bad file)."""

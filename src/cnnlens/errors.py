"""Exceptions raised for problems the user can fix."""

from __future__ import annotations

__all__ = [
    "CnnlensWarning",
    "CompletenessWarning",
    "InputError",
    "ModelLoadError",
    "RuleWarning",
    "ZeroAttributionWarning",
]


class InputError(ValueError):
    """Bad input from the user: a missing file, an unknown layer, a target of the wrong length.

    The message is one line meant to be shown as is (the CLI prints it and exits with code 2).
    """


class ModelLoadError(InputError):
    """A model could not be loaded (unknown name, weights not available offline, bad file)."""


class CnnlensWarning(UserWarning):
    """Base class of cnnlens's warnings: a result was computed but may mislead, and the
    message says why and what to try. Filter them all with
    ``warnings.simplefilter("ignore", cnnlens.CnnlensWarning)``."""


class CompletenessWarning(CnnlensWarning):
    """Integrated gradients: the attributions' sum misses score(x) − score(baseline) by more
    than the tolerance (the path integral is under-resolved); more steps close the gap."""


class ZeroAttributionWarning(CnnlensWarning):
    """An explanation is identically zero for some items: it shows nothing, and the message
    says why that happens with this method and what to try instead."""


class RuleWarning(CnnlensWarning):
    """A method met an operation it has no rule for (named with the module that called it):
    the plain gradient was used there, so the result is not what the method defines (for
    example DeepLIFT no longer sums to the score difference). ``strict=True`` makes it an
    error; ``cnnlens.coverage`` lists the rule of every operation."""

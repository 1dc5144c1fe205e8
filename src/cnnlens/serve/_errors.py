"""The explorer's error for names that do not exist (HTTP 404)."""

from __future__ import annotations

from ..errors import InputError

__all__ = ["NotFoundError"]


class NotFoundError(InputError):
    """A named thing (image, job, sample, index) that does not exist: HTTP 404."""

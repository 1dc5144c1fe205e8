"""``cnnlens serve``: the interactive explorer, a local web app over one model.

:func:`create_app` gives the ASGI app (Starlette); the ``cnnlens serve`` command runs it
with uvicorn on 127.0.0.1. Routes are listed in ``docs/serve.md`` and at ``GET /api``.
Needs the ``serve`` extra (``pip install cnnlens[serve]``).
"""

from __future__ import annotations

from ._app import create_app
from ._explorer import Explorer, Limits

__all__ = ["Explorer", "Limits", "create_app"]

"""(being written)"""

from __future__ import annotations

from ..api import MethodSpec

METHODS: dict[str, MethodSpec] = {}

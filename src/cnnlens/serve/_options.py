"""The method options the explorer lets people set: type, default and bounds for each.

Values arrive as query strings; each is parsed and bounded here so that no request can ask
for unbounded work (a 1-pixel occlusion window, ten thousand SmoothGrad samples)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

__all__ = ["LONG_METHODS", "METHOD_OPTIONS", "OptionSpec", "parse_options"]


@dataclass(frozen=True)
class OptionSpec:
    name: str
    type: str  # "int", "float" or "choice"
    default: int | float | str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""

    def parse(self, method: str, text: str) -> int | float | str:
        if self.type == "choice":
            if text not in self.choices:
                raise InputError(
                    f"{method} option {self.name}={text!r}: one of {', '.join(self.choices)}"
                )
            return text
        try:
            value: int | float = int(text) if self.type == "int" else float(text)
        except ValueError:
            raise InputError(f"{method} option {self.name}={text!r} is not a {self.type}") from None
        if value != value or (self.minimum is not None and value < self.minimum):
            raise InputError(f"{method} option {self.name}={text} is below {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise InputError(f"{method} option {self.name}={text} is above {self.maximum:g}")
        return value

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "default": self.default}
        if self.minimum is not None:
            out["min"] = self.minimum
        if self.maximum is not None:
            out["max"] = self.maximum
        if self.choices:
            out["choices"] = list(self.choices)
        if self.help:
            out["help"] = self.help
        return out


# Defaults as in the report (cnnlens._report.DEFAULT_OPTIONS), so both show the same maps.
METHOD_OPTIONS: dict[str, tuple[OptionSpec, ...]] = {
    "occlusion": (
        OptionSpec("window", "int", 32, 8, 224, help="side of the grey window, pixels"),
        OptionSpec("stride", "int", 16, 4, 224, help="step between windows, pixels"),
        OptionSpec("baseline", "float", 0.0, -5, 5, help="fill value (normalized input)"),
    ),
    "smoothgrad": (
        OptionSpec("samples", "int", 16, 1, 64, help="noisy copies averaged"),
        OptionSpec("noise", "float", 0.15, 0, 1, help="noise σ as a fraction of the range"),
        OptionSpec("seed", "int", 0, 0, 2**31 - 1),
    ),
    "integrated_gradients": (
        OptionSpec("steps", "int", 32, 1, 128, help="points on the path from the baseline"),
    ),
    "lrp": (
        OptionSpec(
            "composite",
            "choice",
            "epsilon_plus",
            choices=(
                "epsilon_plus",
                "epsilon_plus_flat",
                "epsilon_gamma_box",
                "epsilon_alpha2_beta1",
            ),
        ),
    ),
}

# Methods that run the model once per window or channel: they go through a job with
# progress and cancel; the others answer within the request.
LONG_METHODS: frozenset[str] = frozenset({"occlusion", "scorecam"})


def parse_options(method: str, query: Mapping[str, str]) -> dict[str, Any]:
    """The method's options from ``query`` (``opt.NAME=value``), defaults filled in."""
    specs = {spec.name: spec for spec in METHOD_OPTIONS.get(method, ())}
    given = {key[4:]: value for key, value in query.items() if key.startswith("opt.")}
    unknown = sorted(set(given) - set(specs))
    if unknown:
        allowed = ", ".join(sorted(specs)) or "none"
        raise InputError(
            f"method {method!r} takes no option {', '.join(unknown)} here (options: {allowed})"
        )
    return {
        name: spec.parse(method, given[name]) if name in given else spec.default
        for name, spec in specs.items()
    }

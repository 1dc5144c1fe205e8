"""Composites: which affine layer gets which rule (Kohlbrenner et al. 2020, zennit).

Every composite shares zennit's base map for the parameter-free layers: rectifiers and a
BatchNorm that follows no convolution pass relevance unchanged, average pooling and sums
(residual additions) distribute it in proportion to each input's contribution, max pooling
gives it to the winner (its gradient), concatenation splits it by position. A BatchNorm right
after a convolution or dense layer is folded into it first (see :mod:`.canonizers`), so the
rule below sees the folded layer.

========================  ===================  =================  =============
composite                 first layer          other convolutions  dense layers
========================  ===================  =================  =============
``epsilon_plus``          (as the others)      z+                  epsilon
``epsilon_plus_flat``     flat (conv or dense) z+                  epsilon
``epsilon_gamma_box``     z^B (convolution)    gamma (0.25)        epsilon
``epsilon_alpha2_beta1``  (as the others)      alpha2-beta1        epsilon
========================  ===================  =================  =============

"First layer" is the first layer of the listed kind that the forward pass runs on the input
(zennit takes the first in module order; for feed-forward CNNs they are the same layer).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from ...errors import InputError
from .rules import AffineRule, Bound, alpha_beta, epsilon, flat, gamma, z_box, z_plus

__all__ = ["COMPOSITES", "Composite", "make_composite"]


@dataclass(frozen=True)
class Composite:
    """Rules by layer kind. ``first`` (if set) replaces the rule of the first affine layer
    when that layer's kind is in ``first_kinds``. ``stabilizer`` is the epsilon of the
    proportional rule for average pooling and sums."""

    name: str
    conv: AffineRule
    linear: AffineRule
    first: AffineRule | None = None
    first_kinds: frozenset[str] = frozenset({"conv", "linear"})
    stabilizer: float = 1e-6

    def rule_for(self, kind: str) -> AffineRule:
        return self.conv if kind == "conv" else self.linear

    def first_rule(self, kind: str) -> AffineRule | None:
        """The special rule for the first layer of this kind, if the composite has one."""
        return self.first if kind in self.first_kinds else None


COMPOSITES: tuple[str, ...] = (
    "epsilon_plus",
    "epsilon_plus_flat",
    "epsilon_gamma_box",
    "epsilon_alpha2_beta1",
)


def make_composite(
    name: str,
    *,
    epsilon_value: float = 1e-6,
    gamma_value: float = 0.25,
    stabilizer: float = 1e-6,
    low: Bound | None = None,
    high: Bound | None = None,
) -> Composite:
    """The composite called ``name`` with these parameters (zennit's defaults)."""
    if not isinstance(name, str) or name not in COMPOSITES:
        close = difflib.get_close_matches(str(name), COMPOSITES, n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; one of {', '.join(COMPOSITES)}"
        raise InputError(f"lrp: unknown composite {name!r}{hint}")
    for label, value in (("epsilon", epsilon_value), ("stabilizer", stabilizer)):
        if not isinstance(value, (int, float)) or not value > 0:
            raise InputError(f"lrp: {label} must be a positive number, got {value!r}")
    dense = epsilon(float(epsilon_value))
    if name == "epsilon_plus":
        return Composite(name, z_plus(stabilizer), dense, stabilizer=stabilizer)
    if name == "epsilon_plus_flat":
        return Composite(name, z_plus(stabilizer), dense, flat(stabilizer), stabilizer=stabilizer)
    if name == "epsilon_gamma_box":
        return Composite(
            name,
            gamma(float(gamma_value), stabilizer),
            dense,
            z_box(low, high, stabilizer),
            frozenset({"conv"}),
            stabilizer=stabilizer,
        )
    return Composite(name, alpha_beta(2.0, 1.0, stabilizer), dense, stabilizer=stabilizer)

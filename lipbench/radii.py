"""The certified radii, declared once: each is a record field (``cra_36``) with its ε and its labels."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Radius:
    """ε = ``numerator`` / 255 in the [0, 1] pixel scale; CRA at ε is recorded as ``key``."""

    numerator: int

    @property
    def key(self) -> str:
        return f"cra_{self.numerator}"

    @property
    def eps(self) -> float:
        return self.numerator / 255

    @property
    def label(self) -> str:
        return "1" if self.numerator == 255 else f"{self.numerator}/255"

    @property
    def latex(self) -> str:
        return "$1$" if self.numerator == 255 else rf"$\frac{{{self.numerator}}}{{255}}$"


RADII = tuple(Radius(n) for n in (36, 72, 108, 255))
EPSILONS = {radius.key: radius.eps for radius in RADII}
RANKING = RADII[0]  # leaderboards rank by CRA at 36/255, as the papers do

"""A network that is a sequence of modules, some built by the method and everything else 1-Lipschitz by
construction: its bound is the product of the method layers' bounds (shared by the generic families)."""
from __future__ import annotations

from torch import Tensor, nn

from lipbench.contracts import product_of_layer_bounds
from lipbench.registry import LayerMethod


class LayeredNetwork(nn.Module):
    def __init__(self, method: LayerMethod, in_shape: tuple[int, ...]):
        super().__init__()
        self.method, self.in_shape = method, tuple(in_shape)

    def set_body(self, body: list[nn.Module], built: list[nn.Module]) -> None:
        """The modules in order; ``built``: those the method built (the audit bounds each one)."""
        self.body = nn.Sequential(*body)
        self.method_layer_positions = [i for i, m in enumerate(body) if any(m is b for b in built)]

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    def method_layers(self) -> list[nn.Module]:
        """The layers built by the method, in order (everything else is 1-Lipschitz by construction)."""
        return [self.body[i] for i in self.method_layer_positions]

    def lipschitz_bound(self) -> float:
        return product_of_layer_bounds(self, self.method.bound)

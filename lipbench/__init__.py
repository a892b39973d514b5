"""lipbench: train 1-Lipschitz networks under a fixed time budget and certify them."""
from lipbench.errors import UserError
from lipbench.registry import (LayerMethod, create_layer, get_method, list_layers, load_plugin,
                               register_layer)

__version__ = "0.1.0"

__all__ = ["LayerMethod", "UserError", "__version__", "create_layer", "get_method", "list_layers",
           "load_plugin", "register_layer"]

"""lipbench: train 1-Lipschitz networks under a fixed time budget and certify them."""
from lipbench.errors import UserError
from lipbench.registry import (LayerMethod, ModelFamily, create_layer, create_model, get_method, list_layers,
                               load_plugin, register_layer, register_model)
from lipbench.version import __version__

__all__ = ["LayerMethod", "ModelFamily", "UserError", "__version__", "create_layer", "create_model", "get_method",
           "list_layers", "load_plugin", "register_layer", "register_model"]

"""Built-in 1-Lipschitz methods. Importing this package registers every one of them.

Each module here registers through :func:`lipbench.register_layer`, exactly as a plugin
would; modules whose names start with an underscore hold shared helpers and register nothing.
"""
from importlib import import_module
from pkgutil import iter_modules

for _module in iter_modules(__path__):
    if not _module.name.startswith("_"):
        import_module(f"{__name__}.{_module.name}")

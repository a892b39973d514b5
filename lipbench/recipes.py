"""Training recipes: the loss, optimizer, Lookahead, head, schedule, clipping and radius ramp a paper
trains with, as one YAML file of training settings (``recipes/``, or a path), combined with any budget.

    description: "..."
    sources: ["the paper or code each value comes from"]
    inferred: {setting: "why, where the paper and code do not state it"}
    loss: emma
    optimizer: nadam
    ...                                  # any setting of lipbench.settings.TrainSettings

A recipe's settings override the budget preset's and the method's own (they are what the user chose);
command-line options override the recipe. ``prach`` (the default) sets nothing: the protocol of
Prach et al. that the presets and methods already state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lipbench.errors import UserError
from lipbench.settings import PROTOCOL_KEYS, check_settings

DEFAULT_RECIPE = "prach"
DESCRIBING_KEYS = ("description", "sources", "inferred")


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    inferred: dict[str, str] = field(default_factory=dict)


def recipe_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("lipbench.recipes_data").iterdir() if p.name.endswith(".yaml"))


def load_recipe(text: str) -> Recipe:
    """A shipped recipe by name (``lipbench recipes`` lists them) or the path of a YAML recipe."""
    if text.endswith((".yaml", ".yml")):
        path = Path(text).expanduser()
        if not path.is_file():
            raise UserError(f"recipe file {text} does not exist")
        return parse_recipe(path.stem, path.read_text(), str(path))
    if text not in recipe_names():
        raise UserError(f"unknown recipe {text!r}; shipped recipes: {', '.join(recipe_names())} "
                        "(or give the path of a .yaml recipe)")
    return parse_recipe(text, (resources.files("lipbench.recipes_data") / f"{text}.yaml").read_text(),
                        f"recipes/{text}.yaml")


def parse_recipe(name: str, text: str, origin: str) -> Recipe:
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{origin} is not valid YAML: {getattr(error, 'problem', error)}") from None
    if not isinstance(document, dict):
        raise UserError(f"{origin} must be a mapping of training settings (e.g. loss: emma)")
    unknown = sorted(set(document) - set(DESCRIBING_KEYS) - set(PROTOCOL_KEYS))
    if unknown:
        raise UserError(f"{origin}: unknown key {unknown[0]!r}; a recipe holds {', '.join(DESCRIBING_KEYS)} and "
                        f"training settings: {', '.join(PROTOCOL_KEYS)}")
    inferred = document.get("inferred") or {}
    if not isinstance(inferred, dict):
        raise UserError(f"{origin}: inferred must map settings to why their value was inferred")
    settings = check_settings({k: v for k, v in document.items() if k in PROTOCOL_KEYS}, origin)
    return Recipe(name, str(document.get("description", "")), settings, tuple(map(str, document.get("sources") or ())),
                  {str(k): str(v) for k, v in inferred.items()})

"""Budget presets (YAML files), installed as package data."""

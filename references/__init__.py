"""The papers' numbers (YAML files, one per paper), installed as package data; see README.md here."""

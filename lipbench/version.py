"""The lipbench version: part of every job id, so it changes only when results are no longer comparable."""
__version__ = "0.1.0"

"""Splat Restore engine: the single-step SD-Turbo restorer, its checkpoints, CLI and stdio service."""
__version__ = "0.1.0"

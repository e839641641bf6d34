"""Model families for the runner: each module registers its ``model=<name>`` options on import.

``optsample.config`` imports this package after defining ``register_model``; a module here does
``from ..config import register_model, BuiltModel, ModelConfig`` and calls ``register_model(...)``.
"""

from . import diffusers, digits  # noqa: F401

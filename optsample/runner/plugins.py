"""Plugins: modules that register samplers, update rules, schedules, models or metrics on import.

The runner imports, in every process that runs a job (the launcher's joblib / submitit workers too):

- every module of the entry-point group ``optsample.plugins`` (installed packages: in their pyproject,
  ``[project.entry-points."optsample.plugins"] mine = "my_package.samplers"``); optsample's own model
  families are listed there as well, and :data:`SHIPPED` is imported anyway, so an editable checkout
  whose metadata predates the group still finds them;
- the modules of the runner key ``plugins=[my_module, ...]`` (importable: on ``PYTHONPATH`` or installed).
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata
from typing import Iterable

GROUP = "optsample.plugins"
SHIPPED = ("optsample.zoo.digits.runner", "optsample.integrations.diffusers.runner")


class PluginError(ImportError):
    """A plugin module that cannot be imported; the message names it."""


def import_plugin(module: str, origin: str) -> None:
    if not isinstance(module, str) or not module:
        raise PluginError(f"{origin}: a plugin is a module name, got {module!r}")
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise PluginError(f"{origin}: cannot import plugin {module!r} ({type(err).__name__}: {err})") from err


def entry_point_modules() -> list[str]:
    """The modules named in the ``optsample.plugins`` entry-point group of every installed distribution."""
    return [ep.value.partition(":")[0].strip() for ep in metadata.entry_points(group=GROUP)]


_installed_loaded = False


def load_installed() -> None:
    """Import the entry-point plugins and the shipped model families (once per process)."""
    global _installed_loaded
    if _installed_loaded:
        return
    _installed_loaded = True
    for module in dict.fromkeys([*entry_point_modules(), *SHIPPED]):
        import_plugin(module, f"entry point group {GROUP!r}")


def load(modules: Iterable[str] = ()) -> None:
    """Import the runner key ``plugins`` (a module name or a list of them) after the installed plugins."""
    load_installed()
    if isinstance(modules, str):
        modules = [modules]
    for module in modules or ():
        if module not in sys.modules:
            import_plugin(module, "plugins")


def from_overrides(args: Iterable[str]) -> list[str]:
    """The ``plugins=...`` value among Hydra command-line overrides (``plugins=[a,b]``, ``plugins=a``,
    ``+plugins=...``): imported before the config is composed, so that ``sampler=<a plugin's sampler>``
    is a known option."""
    found: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key.lstrip("+~") != "plugins":
            continue
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):
            value = value[1:-1]
        found = [v.strip().strip("'\"") for v in value.split(",") if v.strip()]
    return found

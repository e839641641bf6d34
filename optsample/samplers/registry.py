"""The sampler registry: name -> function + typed hyper-parameter dataclass.

A sampler is registered with ``@register("name")``. Its hyper-parameters are the keyword-only
arguments of the function after the framework's own (``callback``, ``noise_sampler``); the registry turns them into a dataclass (``get(name).params``) so the
function signature is the single source of truth. Bounds are declared on the annotation::

    def euler_ancestral(model, x, sigmas, *, callback, noise_sampler,
                        eta: Annotated[float, Range(0.0)] = 1.0, s_noise: Annotated[float, Range(0.0)] = 1.0):

and checked when the dataclass is built, i.e. before any model evaluation.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import math
import typing
import warnings
from dataclasses import dataclass
from typing import Annotated, Any, Callable

FRAMEWORK_ARGS = ("callback", "noise_sampler")


@dataclass(frozen=True)
class Range:
    """Closed (or half-open with ``*_open``) bounds for a numeric hyper-parameter."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def check(self, name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"hyper-parameter {name!r} must be a number, got {value!r}")
        if math.isnan(value):
            raise ValueError(f"hyper-parameter {name!r} is NaN")
        too_low = value <= self.low if self.low_open else value < self.low
        too_high = value >= self.high if self.high_open else value > self.high
        if too_low or too_high:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            raise ValueError(f"hyper-parameter {name!r} = {value!r} is outside {left}{self.low}, {self.high}{right}")


@dataclass(frozen=True)
class Choice:
    """The hyper-parameter must be one of ``options``."""

    options: tuple

    def __init__(self, *options):
        object.__setattr__(self, "options", tuple(options))

    def check(self, name: str, value: Any) -> None:
        if value not in self.options:
            raise ValueError(f"hyper-parameter {name!r} = {value!r} is not one of {list(self.options)}")


def _validate(self) -> None:
    """``__post_init__`` of every generated params dataclass: type coercion and bounds."""
    hints = type(self)._hints
    for field in dataclasses.fields(self):
        hint = hints[field.name]
        value = getattr(self, field.name)
        base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            object.__setattr__(self, field.name, value)
        if base is int and isinstance(value, float) and value.is_integer():
            value = int(value)
            object.__setattr__(self, field.name, value)
        if base in (int, float, bool, str) and not isinstance(value, base):
            raise TypeError(f"hyper-parameter {field.name!r} must be {base.__name__}, got {value!r}")
        for marker in getattr(hint, "__metadata__", ()):
            marker.check(field.name, value)
    extra_check = getattr(type(self), "_extra_check", None)
    if extra_check is not None:
        extra_check(self)


@dataclass(frozen=True)
class SamplerSpec:
    """What the registry knows about one sampler."""

    name: str
    fn: Callable
    params: type  # a dataclass; ``params(**hparams)`` validates
    stochastic: bool
    doc: str
    # Bumped whenever a change alters the sampler's numbers: result rows carry it and the runner's result
    # key includes it, so rows of an older revision are neither reused nor silently mixed in a table.
    revision: int = 1

    @property
    def source_hash(self) -> str:
        """12 hex digits of SHA-256 over the sampler function's source (recorded in rows, not in the key)."""
        try:
            source = inspect.getsource(self.fn)
        except (OSError, TypeError):
            return "unknown"
        return hashlib.sha256(source.encode()).hexdigest()[:12]

    def make_params(self, **hparams):
        unknown = sorted(set(hparams) - {f.name for f in dataclasses.fields(self.params)})
        if unknown:
            known = [f.name for f in dataclasses.fields(self.params)]
            raise TypeError(f"sampler {self.name!r} has no hyper-parameter(s) {unknown}; it takes {known}")
        return self.params(**hparams)


# Bounds shared by many samplers' hyper-parameters.
NonNegative = Annotated[float, Range(0.0)]
Positive = Annotated[float, Range(0.0, low_open=True)]
UnitInterval = Annotated[float, Range(0.0, 1.0)]
Decay = Annotated[float, Range(0.0, 1.0, high_open=True)]  # an EMA decay / momentum coefficient in [0, 1)

_REGISTRY: dict[str, SamplerSpec] = {}


class UnknownSamplerError(KeyError):
    """An unknown sampler name; the message lists the nearest registered names."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def params_dataclass(name: str, fn: Callable, check: Callable | None = None) -> type:
    """Build the typed, validating hyper-parameter dataclass from ``fn``'s keyword-only arguments."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    fields = []
    for pname, param in sig.parameters.items():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY or pname in FRAMEWORK_ARGS:
            continue
        if param.default is inspect.Parameter.empty:
            raise TypeError(f"sampler {name!r}: hyper-parameter {pname!r} needs a default")
        fields.append((pname, hints.get(pname, Any), dataclasses.field(default=param.default)))
    cls_name = "".join(part.capitalize() for part in name.split("_")) + "Params"
    namespace = {"__post_init__": _validate, "_extra_check": staticmethod(check) if check else None,
                 "_hints": {pname: hint for pname, hint, _ in fields}}
    return dataclasses.make_dataclass(cls_name, fields, frozen=True, namespace=namespace)


def register(name: str, *, stochastic: bool = False, check: Callable | None = None, revision: int = 1):
    """Decorator: register ``fn`` under ``name``. ``check(params)`` may add cross-field validation;
    ``revision`` (an integer >= 1) is bumped by every change that alters the sampler's numbers.

    Registering a name again replaces the earlier sampler with a warning (a re-run notebook cell).
    """
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        raise ValueError(f"revision must be an integer >= 1, got {revision!r}")

    def wrap(fn: Callable) -> Callable:
        if name in _REGISTRY:  # re-running a notebook cell re-registers: replace, but say so
            warnings.warn(f"sampler {name!r} is already registered; replacing it", stacklevel=2)
        params = params_dataclass(name, fn, check)
        doc = inspect.getdoc(fn) or ""
        _REGISTRY[name] = SamplerSpec(name, fn, params, stochastic, doc.split("\n")[0], revision)
        return fn

    return wrap


def available() -> list[str]:
    """Names of every registered sampler, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> SamplerSpec:
    """The spec of sampler ``name``; an unknown name raises KeyError listing the nearest names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=5, cutoff=0.5)
        hint = f"did you mean {close}? " if close else ""
        raise UnknownSamplerError(f"unknown sampler {name!r}; {hint}available: {available()}") from None

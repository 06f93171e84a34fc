"""Hyperparameter declarations: what a strategy accepts, written once and read everywhere.

A strategy class declares its hyperparameters as a `Params` of `Param` (name, type, bounds or
choices, default, whether PBT may change it in a running trial, a one-line doc)::

    class RWalk(Strategy):
        name = "rwalk"
        params = Params(
            Param("lambda", float, 0.1, low=0, low_open=True, mutable=True, doc="penalty weight"),
            Param("alpha", float, 0.9, low=0, high=1, mutable=True, doc="EWC++ factor of the new g^2"),
        )

Config validation (`clcore.config`), the strategy's own constructor, the sweep validator, its
JSON Schema, PBT's mutable set and the docs table all read these declarations, so a rule such as
"lambda is a finite number > 0" exists once. This module imports no torch: the declarations are
read from the strategies' source files without importing them (`clcore.strategies.catalogue`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

KINDS = {"float": float, "int": int, "str": str, "bool": bool}


class ConfigError(ValueError):
    """A config field has a bad value. ``field`` is its dotted path, ``message`` the problem, and
    ``allowed`` (data, when known) what the field accepts; the message ends with it."""

    def __init__(self, field_path: str, message: str, allowed: Optional[str] = None):
        if allowed is not None and allowed not in message:
            message = f"{message}; allowed: {allowed}"
        self.field = field_path
        self.message = message
        self.allowed = allowed
        super().__init__(f"{field_path}: {message}")

    def __reduce__(self):  # picklable (a sweep trial's error travels from a Ray worker to the driver)
        return type(self), (self.field, self.message, self.allowed)


class RuleError(ConfigError):
    """The value breaks the field's own rule (a bound, a choice); ``allowed`` says what the rule is.
    Other `ConfigError`s are about how fields fit together."""


def coerce(kind: type, value, path: str):
    """``value`` as a ``kind`` (int, float, bool, str) or `ConfigError` naming ``path``.

    Integers may be written as whole floats (``3.0``); floats as strings, because YAML 1.1 reads
    ``1e-3`` as one; a bool is never taken for a number."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(path, f"must be an integer, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(path, f"must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"must be a string, got {value!r}")
        return value
    return value


@dataclass(frozen=True)
class Param:
    """One hyperparameter. ``kind`` is float, int, str or bool; numbers may have bounds (``low``/
    ``high``, closed unless ``*_open``; floats must be finite), strings ``choices``. ``default`` None
    with ``nullable`` False means: no default, the value must be given where the parameter applies.
    ``nullable`` (a phrase) makes null a value and says what it means (``"all samples"``).
    ``applies_when = ("mode", "online")``: the parameter exists only when that sibling has that value.
    ``mutable``: PBT may change it between tasks of a running trial (the state keeps its shape)."""

    name: str
    kind: type
    default: Any = None
    doc: str = ""
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    choices: Optional[tuple] = None
    nullable: Optional[str] = None
    applies_when: Optional[tuple[str, Any]] = None
    mutable: bool = False

    def __post_init__(self):
        if self.kind not in KINDS.values():
            raise TypeError(f"Param {self.name!r}: kind must be one of float, int, str, bool, got {self.kind!r}")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.default is not None:
            self.check(self.default, self.name)  # a declaration's own default must be valid

    @property
    def attribute(self) -> str:
        """The Python attribute for the parameter (``lambda`` is a keyword: ``lambda_``)."""
        return self.name + "_" if self.name == "lambda" else self.name

    @property
    def kind_name(self) -> str:
        return self.kind.__name__

    def allowed(self) -> str:
        """What the parameter accepts, as the error messages and the docs table say it."""
        if self.choices is not None:
            text = ", ".join(map(str, self.choices))
        elif self.kind is bool:
            text = "true or false"
        elif self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        elif self.low is not None or self.high is not None:
            bound, is_open, sign = (self.low, self.low_open, ">") if self.low is not None else (self.high, self.high_open, "<")
            what = "an integer" if self.kind is int else "a finite number"
            text = f"{what} {sign}{'' if is_open else '='} {_num(bound)}"
        else:
            text = {int: "an integer", float: "a finite number", str: "a string"}[self.kind]
        return f"{text}, or null ({self.nullable})" if self.nullable else text

    def check(self, value, path: str):
        """``value`` coerced to the parameter's kind and checked against its rule; `ConfigError` naming
        ``path`` otherwise."""
        if value is None and self.nullable:
            return None
        if value is None:
            raise RuleError(path, f"must be {self.allowed()}, got None", self.allowed())
        value = coerce(self.kind, value, path)
        if self.choices is not None:
            if value not in self.choices:
                raise RuleError(path, f"unknown value {value!r}", self.allowed())
            return value
        if self.kind in (int, float):
            inside = ((self.kind is int or math.isfinite(value))
                      and (self.low is None or (value > self.low if self.low_open else value >= self.low))
                      and (self.high is None or (value < self.high if self.high_open else value <= self.high)))
            if not inside:
                raise RuleError(path, f"must be {self.allowed()}, got {value!r}", self.allowed())
        return value

    def applies(self, values: dict) -> bool:
        if self.applies_when is None:
            return True
        sibling, wanted = self.applies_when
        return values.get(sibling) == wanted

    def describe_condition(self) -> str:
        sibling, wanted = self.applies_when
        return f"{sibling} {wanted!r}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


@dataclass(frozen=True)
class Params:
    """A strategy's declared hyperparameters, in order."""

    items: tuple[Param, ...] = ()

    def __init__(self, *items: Param):
        names = [p.name for p in items]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise TypeError(f"Params: {', '.join(repeated)} declared twice")
        object.__setattr__(self, "items", tuple(items))

    def __iter__(self):
        return iter(self.items)

    def __contains__(self, name: str) -> bool:
        return any(p.name == name for p in self.items)

    def __getitem__(self, name: str) -> Param:
        for p in self.items:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.items)

    def resolve(self, values: dict, owner: str, prefix: str = "") -> dict:
        """Every declared parameter's checked value (defaults for the missing ones, None where a
        parameter does not apply); `ConfigError` naming ``prefix + name`` for a bad or foreign one.
        ``owner`` names the strategy in messages."""
        for key in values:
            if key not in self:
                raise ConfigError(prefix + str(key), f"is not a parameter of strategy {owner!r}",
                                  ", ".join(self.names) or "none")
        out: dict = {}
        for p in self.items:  # in order, so ``applies_when`` sees its sibling's checked value
            given = values.get(p.name)
            if not p.applies(out):
                if given is not None:
                    raise ConfigError(prefix + p.name, f"only applies to {p.describe_condition()}",
                                      f"null unless {p.describe_condition()}")
                out[p.name] = None
                continue
            value = p.default if given is None else given
            if value is None and not p.nullable:
                condition = f" with {p.describe_condition()}" if p.applies_when else ""
                raise ConfigError(prefix + p.name, f"is needed{condition}", p.allowed())
            out[p.name] = p.check(value, prefix + p.name)
        return out

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.items}


__all__ = ["ConfigError", "RuleError", "Param", "Params", "coerce", "KINDS"]

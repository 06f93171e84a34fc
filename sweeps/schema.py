"""The sweep file as a JSON Schema, for editors: ``clsweep schema`` prints it, ``docs/sweep.schema.json``
holds it, and the shipped sweep files point at it (``# yaml-language-server: $schema=...``).

It is the schema of the pydantic models `sweeps.spec` validates sweep files with, never written by
hand, with two parts spelled out where the validator leaves them to clcore or to its own rules:
``base`` is closed section by section, with ``base.strategy`` a union tagged on ``name`` holding each
strategy's parameters, types, bounds, defaults and docs (`clcore.params`), and the keys of ``search``
are the searchable config paths. What a schema cannot say (a distribution's bounds against the field
it searches, settings that depend on each other, repeated YAML keys, bytes that are not UTF-8) is
left to `sweeps.spec.load_spec`, which ``clsweep run --dry-run`` runs.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from clcore import config as C
from clcore.params import Param
from clcore.strategies import catalogue
from sweeps import spec as S

_CLOSED = ConfigDict(extra="forbid")


def _param_field(p: Param):
    """A strategy parameter as a pydantic field: kind, bounds or choices, default, doc."""
    bounds = {}
    if p.low is not None:
        bounds["gt" if p.low_open else "ge"] = p.low
    if p.high is not None:
        bounds["lt" if p.high_open else "le"] = p.high
    if p.choices is not None:
        kind: Any = Literal[p.choices]
    elif p.kind is float:  # bounds on the number; a numeric string (YAML 1.1's 1e-3) is left to the validator
        kind = Union[Annotated[float, Field(**bounds)], Annotated[str, Field(pattern=S.NUMBER_TEXT)]]
    else:
        kind = Annotated[p.kind, Field(**bounds)]
    doc = p.doc + (f" (only with {p.describe_condition()})" if p.applies_when else "")
    return (Optional[kind] if p.nullable or p.default is None else kind), doc


def _strategy_models() -> list[type[BaseModel]]:
    out = []
    for name, info in catalogue.strategies().items():
        fields = {"name": (Literal[name], ...)}
        for p in info.params:  # `lambda` is a keyword: the field goes by an alias
            kind, doc = _param_field(p)
            fields[p.attribute] = (kind, Field(p.default, alias=p.name, description=doc))
        out.append(create_model(f"strategy_{name}", __config__=ConfigDict(extra="forbid", populate_by_name=False),
                                __doc__=info.doc, **fields))
    return out


def _section_model(cls, name: str, choices: dict[str, tuple]) -> type[BaseModel]:
    """A closed model of clcore's dataclass ``cls``: its fields, types and defaults; ``choices`` as enums."""
    hints = typing.get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        kind = S.Number if hints[f.name] is float else Optional[S.Number] if hints[f.name] == Optional[float] else \
            hints[f.name]
        if f.name in choices:
            nullable = type(None) in typing.get_args(hints[f.name])
            kind = Optional[Literal[tuple(choices[f.name])]] if nullable else Literal[tuple(choices[f.name])]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else ...)
        fields[f.name] = (kind, default)
    return create_model(name, __config__=_CLOSED, **fields)


@functools.cache
def sweep_model() -> type[BaseModel]:
    """`sweeps.spec.SweepSpec` with ``base`` and the keys of ``search`` spelled out."""
    sections = {"benchmark": (C.BenchmarkConfig, {"name": C.BENCHMARKS, "scenario": C.SCENARIOS}),
                "model": (C.ModelConfig, {"name": C.MODELS, "head": C.HEADS}),
                "train": (C.TrainConfig, {"optimizer": C.OPTIMIZERS})}
    base_fields: dict[str, Any] = {k: (Optional[_section_model(cls, k, choices)], None)
                                   for k, (cls, choices) in sections.items()}
    base_fields["strategy"] = (Optional[Annotated[Union[tuple(_strategy_models())], Field(discriminator="name")]], None)
    base_fields["seed"] = (int, 0)
    base = create_model("base", __config__=_CLOSED, __doc__="An ExperimentConfig, as `clsweep train` reads it; "
                                                           "searched fields may be left out", **base_fields)
    searchable = tuple(p for p in C.config_paths() if p not in S.NOT_SEARCHABLE)
    return create_model("sweep", __base__=S.SweepSpec, __doc__="A clsweep sweep file",
                        base=(base, ...),
                        search=(dict[Literal[searchable], S.AnyDistribution], ...))


def json_schema() -> dict:
    schema = TypeAdapter(sweep_model()).json_schema(by_alias=True)
    chf = S.Chf.model_fields["name"].annotation.__args__[0]  # searches nothing: its rounds are grids of their own
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": "clsweep sweep file",
            "if": {"properties": {"protocol": {"properties": {"name": {"const": chf}}, "required": ["name"]}},
                   "required": ["protocol"]},
            "then": {"properties": {"search": {"maxProperties": 0}}},
            "else": {"properties": {"search": {"minProperties": 1}}}}


__all__ = ["json_schema", "sweep_model"]

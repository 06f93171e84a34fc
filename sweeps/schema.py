"""The sweep file as a JSON Schema, for editors: ``clsweep schema`` prints it, ``docs/sweep.schema.json``
holds it, and the shipped sweep files point at it (``# yaml-language-server: $schema=...``).

The schema is built with pydantic v2 from the tables `sweeps.spec` validates with and from the
strategies' declarations (`clcore.params`), never written by hand: sections are closed
(``extra="forbid"``), ``search`` maps searchable config paths to a union tagged on ``dist``,
``scheduler`` is a union tagged on ``name`` with each scheduler's own settings, and ``base.strategy``
a union tagged on ``name`` with each strategy's parameters, types, bounds, defaults and docs.
What a schema cannot say (a distribution's bounds against the field it searches, settings that depend
on each other, repeated YAML keys, bytes that are not UTF-8) is left to `sweeps.spec.load_spec`,
which ``clsweep run --dry-run`` runs.
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
# YAML 1.1 reads 1.0e6 and 1e-3 as strings, and clcore takes them as numbers (`clcore.params.coerce`).
_NUMBER_TEXT = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"
Number = Union[float, Annotated[str, Field(pattern=_NUMBER_TEXT)]]


def _numbers_as_text(kind):
    """``kind`` with every float also accepted as a numeric string."""
    if kind is float:
        return Number
    args = typing.get_args(kind)
    if typing.get_origin(kind) is Union:
        return Union[tuple(_numbers_as_text(a) for a in args)]
    return kind


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
        kind = Union[Annotated[float, Field(**bounds)], Annotated[str, Field(pattern=_NUMBER_TEXT)]]
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


def _section_model(cls, name: str, choices: dict[str, tuple] | None = None) -> type[BaseModel]:
    """A closed model of dataclass ``cls``: its fields, types and defaults; ``choices`` as enums."""
    hints = typing.get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        kind = _numbers_as_text(hints[f.name])
        if choices and f.name in choices:
            nullable = type(None) in typing.get_args(hints[f.name])
            kind = Optional[Literal[tuple(choices[f.name])]] if nullable else Literal[tuple(choices[f.name])]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else ...)
        fields[f.name] = (kind, default)
    return create_model(name, __config__=_CLOSED, **fields)


def _distribution_models() -> list[type[BaseModel]]:
    out = []
    for dist, settings in S.DISTRIBUTIONS.items():
        fields: dict[str, Any] = {"dist": (Literal[dist], ...)}
        for s in settings:
            if s == "values":
                fields[s] = (Annotated[list[Any], Field(min_length=1)], ...)
            else:
                fields[s] = (Number, ...)
        out.append(create_model(f"dist_{dist}", __config__=_CLOSED, **fields))
    return out


def _scheduler_models() -> list[type[BaseModel]]:
    hints = typing.get_type_hints(S.Scheduler)
    out = []
    for name, settings in S.SCHEDULERS.items():
        fields: dict[str, Any] = {"name": (Literal[name], ...)}
        fields.update({s: (hints[s], default) for s, default in settings.items()})
        out.append(create_model(f"scheduler_{name}", __config__=_CLOSED, **fields))
    return out


def _union(models: list[type[BaseModel]], tag: str):
    return Annotated[Union[tuple(models)], Field(discriminator=tag)]


@functools.cache
def sweep_model() -> type[BaseModel]:
    """The pydantic model of a whole sweep file."""
    sections = {"benchmark": (C.BenchmarkConfig, {"name": C.BENCHMARKS, "scenario": C.SCENARIOS}),
                "model": (C.ModelConfig, {"name": C.MODELS, "head": C.HEADS}),
                "train": (C.TrainConfig, {"optimizer": C.OPTIMIZERS})}
    base_fields: dict[str, Any] = {k: (Optional[_section_model(cls, k, choices)], None)
                                   for k, (cls, choices) in sections.items()}
    base_fields["strategy"] = (Optional[_union(_strategy_models(), "name")], None)
    base_fields["seed"] = (int, 0)
    base = create_model("base", __config__=_CLOSED, __doc__="An ExperimentConfig, as `clsweep train` reads it; "
                                                           "searched fields may be left out", **base_fields)
    searchable = tuple(p for p in C.config_paths() if p not in S.NOT_SEARCHABLE)
    schedulers = _union(_scheduler_models(), "name")
    fields = {
        "name": (Annotated[str, Field(pattern=S._NAME.pattern, description="names the storage folder and the "
                                                                             "MLflow experiment")], ...),
        "description": (Optional[str], None),
        "base": (base, ...),
        "search": (Annotated[dict[Literal[searchable], _union(_distribution_models(), "dist")],
                             Field(min_length=1)], ...),
        "objective": (Optional[_section_model(S.Objective, "objective",
                                              {"metric": tuple(S.OBJECTIVES), "mode": ("max", "min")})], None),
        "algorithm": (Optional[_section_model(S.Algorithm, "algorithm",
                                              {"name": S.ALGORITHMS, "sampler": S.SAMPLERS})], None),
        "scheduler": (Optional[Union[Literal[tuple(S.SCHEDULERS)], schedulers]], None),
        "resources": (Optional[_section_model(S.Resources, "resources")], None),
        "storage": (Optional[_section_model(S.Storage, "storage")], None),
        "max_failures": (Annotated[int, Field(ge=0)], 1),
        "tracking": (Optional[_section_model(S.TrackingSpec, "tracking")], None),
    }
    assert set(fields) == set(S.SECTIONS), "sweeps.spec.SECTIONS and the schema's sections differ"
    return create_model("sweep", __config__=_CLOSED, __doc__="A clsweep sweep file", **fields)


def json_schema() -> dict:
    schema = TypeAdapter(sweep_model()).json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": "clsweep sweep file"}


__all__ = ["json_schema", "sweep_model"]

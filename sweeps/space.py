"""SweepSpec.search -> the Ray Tune search space, and what PBT may mutate.

Keys stay the dotted config paths (``strategy.lambda``), so a trial's Ray config is exactly its
searched values; `SweepSpec.trial_config` turns it into the ExperimentConfig. Ray's OptunaSearch
converts these domains to Optuna distributions (log scales stay log, ``randint`` and ``quniform``
on integer fields become integer distributions). List values (``model.hidden_sizes``) travel as
YAML strings, since Optuna's categorical distributions take only scalars.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from sweeps.spec import Distribution, SweepSpec, encode_value, field_kind


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """``{dotted path: Ray Tune domain}`` for `tune.Tuner(param_space=...)`."""
    return {key: domain(d, _integer(key, d)) for key, d in spec.search.items()}


def domain(d: Distribution, integer: bool):
    """One distribution as a Ray Tune domain (``randint``'s high is inclusive in sweep files)."""
    if d.dist == "loguniform":
        return tune.loguniform(d.low, d.high)
    if d.dist == "uniform":
        return tune.uniform(d.low, d.high)
    if d.dist == "quniform":
        return tune.qrandint(d.low, d.high, d.q) if integer else tune.quniform(d.low, d.high, d.q)
    if d.dist == "qloguniform":
        return tune.qlograndint(d.low, d.high, d.q) if integer else tune.qloguniform(d.low, d.high, d.q)
    if d.dist == "randint":
        return tune.randint(d.low, d.high + 1)
    if d.dist == "choice":
        return tune.choice([encode_value(v) for v in d.values])
    return tune.grid_search([encode_value(v) for v in d.values])


def points_to_evaluate(spec: SweepSpec) -> list[dict[str, Any]] | None:
    points = spec.algorithm.points_to_evaluate
    return [{k: encode_value(v) for k, v in p.items()} for p in points] if points else None


def pbt_mutations(spec: SweepSpec) -> dict[str, Any]:
    """PBT's ``hyperparam_mutations``: a list for a choice (PBT shifts to a neighbouring value),
    else the domain (PBT multiplies by 0.8 or 1.2, or resamples; `ClipToSpace` keeps it inside)."""
    out = {}
    for key in spec.scheduler.mutate:
        d = spec.search[key]
        out[key] = [encode_value(v) for v in d.values] if d.discrete else domain(d, _integer(key, d))
    return out


class ClipToSpace:
    """PBT's ``custom_explore_fn``: a perturbed value (x0.8, x1.2) is put back inside its range
    (and on its grid of multiples of q, and rounded for integer fields), so that a mutation never
    makes an invalid config such as ``strategy.alpha = 1.08``."""

    def __init__(self, spec: SweepSpec):
        self.ranges = {k: (d.low, d.high, d.q, _integer(k, d))
                       for k in spec.scheduler.mutate for d in [spec.search[k]] if not d.discrete}

    def __call__(self, config: dict) -> dict:
        for key, (low, high, q, integer) in self.ranges.items():
            if key not in config:
                continue
            value = min(max(config[key], low), high)
            if q is not None:
                value = min(max(round(value / q) * q, low), high)
            config[key] = int(round(value)) if integer else value
        return config


def _integer(key: str, d: Distribution) -> bool:
    return d.dist == "randint" or field_kind(key) == "int"


__all__ = ["param_space", "domain", "points_to_evaluate", "pbt_mutations", "ClipToSpace"]

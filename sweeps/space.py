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
    """``{dotted path: Ray Tune domain}`` for `tune.Tuner(param_space=...)`; empty when Optuna defines
    the space by run (`define_by_run`)."""
    if uses_define_by_run(spec):
        return {}
    return {key: domain(d, _integer(key, d)) for key, d in spec.search.items()}


def uses_define_by_run(spec: SweepSpec) -> bool:
    """Optuna with conditional keys (`SweepSpec.conditions`): it asks for each only when its condition holds."""
    return spec.algorithm.name == "optuna" and bool(spec.conditions())


class define_by_run:  # noqa: N801 - used as a function: define_by_run(spec) is Optuna's space
    """Optuna's define-by-run space: the unconditional keys first, then each conditional key only when
    the value drawn for its condition's key is the one it needs, so TPE models it on the trials where
    it exists. The same distributions as `domain` (log scales, integer fields, steps of q). A class,
    not a closure: Ray pickles the searcher with its space into the experiment state."""

    def __init__(self, spec: SweepSpec):
        self.spec = spec

    def __call__(self, trial) -> None:
        search, conditions = self.spec.search, self.spec.conditions()
        drawn: dict[str, Any] = {}
        for key in [k for k in search if k not in conditions] + [k for k in search if k in conditions]:
            if key in conditions and drawn.get(conditions[key][0]) != conditions[key][1]:
                continue
            d = search[key]
            if d.discrete:
                encoded = {encode_value(v): v for v in d.values}
                drawn[key] = encoded[trial.suggest_categorical(key, list(encoded))]
                continue
            suggest = trial.suggest_int if _integer(key, d) else trial.suggest_float
            step = {"step": d.q} if d.q is not None else {}
            drawn[key] = suggest(key, d.low, d.high, log=d.dist in ("loguniform", "qloguniform") and not step, **step)


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


__all__ = ["param_space", "domain", "define_by_run", "uses_define_by_run", "points_to_evaluate", "pbt_mutations", "ClipToSpace"]

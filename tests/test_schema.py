"""The sweep file's JSON Schema (sweeps/schema.py): generated, shipped, pointed at by every ready sweep
file, accepting them and rejecting the structural half of the bad-file corpus; the docs' strategy
table is the catalogue's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema", reason="pip install -c constraints.txt -e '.[test]'")

from clcore.strategies import catalogue  # noqa: E402
from sweeps.cli import main  # noqa: E402
from sweeps.schema import json_schema  # noqa: E402
from sweeps.spec import SpecError, load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "docs" / "sweep.schema.json"
READY = sorted((ROOT / "search_spaces").glob("*.yaml"))
BAD = sorted((ROOT / "tests" / "bad_specs").glob("*.yaml"))
SCHEMA_LINE = "# yaml-language-server: $schema=../docs/sweep.schema.json"
# Bad files whose problem is the file's shape (a key, a type, a name out of a list): the schema sees it.
# The others break a rule between fields (a bound against the field it searches, pbt against optuna, ...)
# or are not UTF-8 YAML at all; `load_spec` rejects every one of them (tests/test_spec.py).
STRUCTURAL = {
    "asha_reduction_factor_one", "bad_name", "base_unknown_key", "chf_decay_above_one", "chf_with_a_search",
    "distribution_extra_setting",
    "distribution_missing_setting", "distribution_not_a_mapping", "empty_search", "missing_base", "mlflow_not_bool",
    "negative_max_failures", "not_a_config_field", "objective_bad_mode", "pbt_quantile_above_half",
    "prefix_without_tasks", "reference_lr_not_positive", "reference_unknown_strategy", "unknown_protocol",
    "scheduler_not_a_mapping", "search_benchmark_name", "search_n_tasks", "setting_of_another_scheduler",
    "storage_unknown_key", "test_objective", "unknown_algorithm", "unknown_distribution", "unknown_objective",
    "unknown_sampler", "unknown_scheduler", "unknown_section", "values_empty", "zero_cpus"
}


@pytest.fixture(scope="module")
def validator():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_shipped_schema_is_what_clsweep_schema_prints(tmp_path):
    out = tmp_path / "schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(SHIPPED.read_text()), \
        "docs/sweep.schema.json is stale: clsweep schema --out docs/sweep.schema.json"


@pytest.mark.parametrize("path", READY, ids=lambda p: p.stem)
def test_ready_sweep_files_point_at_the_schema_and_pass_it(path, validator):
    assert path.read_text().splitlines()[0] == SCHEMA_LINE
    assert (path.parent / "../docs/sweep.schema.json").resolve() == SHIPPED
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(yaml.safe_load(
        path.read_text()))]
    assert errors == []
    assert list(validator.iter_errors(load_spec(path).to_dict())) == []  # the resolved spec too


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_the_schema_rejects_every_structural_bad_file_and_load_spec_the_rest(path, validator):
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        data = None  # not YAML: an editor's YAML parser says so before any schema
    rejected = data is None or any(True for _ in validator.iter_errors(data))
    assert rejected == (path.stem in STRUCTURAL or data is None)
    with pytest.raises(SpecError):
        load_spec(path)


def test_every_strategy_and_its_parameters_are_in_the_schema():
    defs = json_schema()["$defs"]
    for name, info in catalogue.strategies().items():
        properties = defs[f"strategy_{name}"]["properties"]
        assert set(properties) == {"name", *info.params.names}
        for p in info.params:
            assert properties[p.name]["description"].startswith(p.doc)


def test_a_wrong_strategy_parameter_is_caught_by_the_schema(validator):
    data = yaml.safe_load((ROOT / "search_spaces" / "rwalk_split_mnist_task.yaml").read_text())
    data["base"]["strategy"]["alpha"] = 1.5
    assert any("strategy" in map(str, e.absolute_path) for e in validator.iter_errors(data))
    data["base"]["strategy"] = {"name": "rwalk", "decay_factor": 0.5}  # an EWC parameter
    assert list(validator.iter_errors(data))


def test_the_docs_strategy_table_is_the_catalogues():
    assert catalogue.markdown_table() in (ROOT / "docs" / "strategies.md").read_text(), \
        "docs/strategies.md is stale: paste clsweep strategies into it"

"""Which strategies exist and what they accept, read from their source files without importing them.

Every module in ``clcore/strategies/`` may define strategy classes; a class with a ``name = "..."``
is a strategy, and its ``params = Params(...)`` (see `clcore.params`) is its declaration. This
module finds them by parsing the files and evaluating only the ``params`` expression, with nothing
but `Param`, `Params` and the four kinds in scope, so validating a config or a sweep file knows
every strategy without importing torch. `clcore.strategies.build_strategy` imports the module
when a strategy is built and checks that the class declares what was read here.

Adding a strategy is adding one file here: nothing else lists strategies.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

from clcore.params import KINDS, ConfigError, Param, Params, RuleError

_FOLDER = Path(__file__).parent
_SCOPE = {"Param": Param, "Params": Params, **KINDS, "__builtins__": {}}


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    module: str      # e.g. clcore.strategies.ewc
    class_name: str  # e.g. EWC
    params: Params
    doc: str         # the class docstring's first line


@functools.cache
def strategies() -> dict[str, StrategyInfo]:
    """Every declared strategy by name, in file order (``base.py`` first)."""
    found: dict[str, StrategyInfo] = {}
    files = sorted(_FOLDER.glob("*.py"), key=lambda f: (f.name != "base.py", f.name))
    for file in files:
        if file.name.startswith("_") or file.name == "catalogue.py":
            continue
        for info in _read(file):
            if info.name in found:
                raise TypeError(f"strategy {info.name!r} is declared twice: {found[info.name].module}."
                                f"{found[info.name].class_name} and {info.module}.{info.class_name}")
            found[info.name] = info
    return found


def _read(file: Path) -> list[StrategyInfo]:
    tree = ast.parse(file.read_text(), filename=str(file))
    out = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        assigned = {t.id: stmt.value for stmt in node.body if isinstance(stmt, ast.Assign)
                    for t in stmt.targets if isinstance(t, ast.Name)}
        name = assigned.get("name")
        if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
            continue
        params = Params()
        if "params" in assigned:
            where = f"{file.name}:{assigned['params'].lineno}"
            try:
                params = eval(compile(ast.Expression(assigned["params"]), where, "eval"), dict(_SCOPE))
            except Exception as error:
                raise TypeError(f"{where}: {node.name}.params must be Params(Param(...), ...) written with literals "
                                f"(it is read without importing the module): {error}") from None
        doc = (ast.get_docstring(node) or "").strip().splitlines()
        out.append(StrategyInfo(name.value, f"clcore.strategies.{file.stem}", node.name, params, doc[0] if doc else ""))
    return out


def names() -> tuple[str, ...]:
    return tuple(strategies())


def info(name, field_path: str = "strategy.name") -> StrategyInfo:
    """The strategy called ``name``, or `RuleError` naming ``field_path`` and every strategy."""
    found = strategies().get(name) if isinstance(name, str) else None
    if found is None:
        raise RuleError(field_path, f"unknown value {name!r}", ", ".join(names()))
    return found


@functools.cache
def all_params() -> dict[str, Param]:
    """Every parameter name any strategy declares, with one declaration of it (for its kind): a name
    declared with two kinds would make ``strategy.<name>`` mean two things, and is refused."""
    out: dict[str, Param] = {}
    for s in strategies().values():
        for p in s.params:
            seen = out.setdefault(p.name, p)
            if (seen.kind, bool(seen.nullable)) != (p.kind, bool(p.nullable)):
                raise TypeError(f"strategy.{p.name} is declared as {seen.kind_name} and as {p.kind_name}")
    return out


def mutable() -> tuple[str, ...]:
    """``strategy.<name>`` for every parameter some strategy lets PBT change in a running trial."""
    return tuple(f"strategy.{n}" for n, p in all_params().items()
                 if any(p.name in s.params and s.params[p.name].mutable for s in strategies().values()))


def check_params(name: str, values: dict, prefix: str = "strategy.") -> dict:
    return info(name, prefix + "name").params.resolve(values, name, prefix)


def markdown_table() -> str:
    """Every strategy's parameters as a Markdown table (docs/strategies.md holds this output)."""
    lines = ["| strategy | parameter | type | default | allowed | PBT may change | meaning |",
             "|---|---|---|---|---|---|---|"]
    for s in strategies().values():
        if not s.params.names:
            lines.append(f"| `{s.name}` | | | | | | {s.doc} |")
        for p in s.params:
            default = {None: "null", True: "true", False: "false"}.get(p.default, p.default) \
                if not isinstance(p.default, (int, float)) or isinstance(p.default, bool) else p.default
            default = f"`{default}`"
            condition = f" (with {p.describe_condition()})" if p.applies_when else ""
            lines.append(f"| `{s.name}` | `{p.name}` | {p.kind_name} | {default} | {p.allowed()}{condition} | "
                         f"{'yes' if p.mutable else 'no'} | {p.doc} |")
    return "\n".join(lines) + "\n"


__all__ = ["StrategyInfo", "markdown_table", "strategies", "names", "info", "all_params", "mutable", "check_params", "ConfigError"]

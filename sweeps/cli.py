"""`clsweep`: the command line.

    clsweep train CONFIG.yaml [--set key=value ...] [--json]     one experiment, no Ray
"""

from __future__ import annotations

import argparse
import json
import sys

from clcore.config import ConfigError, ExperimentConfig, parse_override


def _overrides(pairs: list[str]) -> dict:
    return dict(parse_override(p) for p in pairs or [])


def cmd_train(args: argparse.Namespace) -> int:
    import clcore

    config = ExperimentConfig.from_yaml(args.config).with_overrides(_overrides(args.set))
    result = clcore.run(config)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"device: {result.device}   training time: {result.train_seconds:.1f}s")
    for name, matrix in (("validation", result.val_matrix), ("test", result.test_matrix)):
        print(f"\n{name} accuracy matrix (row i: after task i; column j: task j)")
        for i, row in enumerate(matrix):
            print(f"  after task {i}: " + " ".join(f"{v:6.3f}" for v in row))
    print("\nmetrics")
    for key, value in result.metrics.items():
        print(f"  {key:28s} {value:.4f}" if isinstance(value, float) else f"  {key:28s} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clsweep", description="Hyperparameter sweeps for continual learning.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run one experiment from a config file (no Ray)")
    p.add_argument("config", help="ExperimentConfig YAML (a best config exported by `clsweep best` works too)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. train.lr=0.1")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"clsweep {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

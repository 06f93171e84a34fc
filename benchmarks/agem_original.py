"""A-GEM's own code on this machine: facebookresearch/agem's ``fc_permute_mnist.py`` run with the values its
``replicate_results_iclr19.sh MNIST`` passes, to set the published Permuted MNIST rows beside what their release
gives (docs/results.md, the A-GEM rows' notes).

    python benchmarks/agem_original.py --agem DIR --python TF_PYTHON [--methods VAN,EWC,RWALK] [--runs 5]
                                       [--examples-per-task N]

``DIR``: a checkout of github.com/facebookresearch/agem (read, never written). ``TF_PYTHON``: a Python with
TensorFlow 2 (CPU is enough), six and matplotlib: ``python -m venv /tmp/tf && /tmp/tf/bin/pip install
tensorflow-cpu six matplotlib``. MNIST's four raw files come from ``--data-dir`` (a torchvision root, as the
other benchmarks take), else ``$CLCORE_DATA_DIR``, else ``../shared/datasets``.

Their code is TensorFlow 1 and Python 2. A copy is changed as little as lets Python 3 and TF 2 run it:
``tensorflow`` is imported as ``tensorflow.compat.v1`` with v2 behaviour off; the MNIST reader TF 2 no longer
ships is replaced by one with its split and format (the first 5,000 training images are validation, the other
55,000 training; float32 pixels in [0, 1]; one-hot labels); tabs are expanded, ``print`` statements become
calls, the ``range`` they shuffle in place becomes a list, ``np.bool`` becomes ``bool`` and their meta file is
opened as text. Each run adds ``--cross-validate-mode``, which (with ``--online-cross-val`` unset) only skips
the per-batch snapshots of their learning-curve metric: the same 17 tasks are trained and reported.

One line per method: the mean ± std over runs of the average test accuracy after the last task (their A_T),
forgetting, the accuracy on each task right after learning it (R[k][k]) and the first task's; the last line
is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reproduce import default_data_dir  # noqa: E402

# replicate_results_iclr19.sh, MNIST: the shared flags, then each method's learning rate and --synap-stgth
COMMON = ["--train-single-epoch", "--arch", "FC-S", "--batch-size", "10", "--optim", "SGD"]
METHODS = {"VAN": (0.03, 0.0), "EWC": (0.03, 10.0), "PI": (0.1, 0.1), "MAS": (0.1, 0.1), "RWALK": (0.1, 1.0)}

INPUT_DATA = '''"""Stand-in for tensorflow.examples.tutorials.mnist.input_data: its split and format, from MNIST's raw files."""
import os
import numpy as np


class DataSet:
    def __init__(self, images, labels):
        self._images, self._labels = images, labels

    @property
    def images(self):
        return self._images

    @property
    def labels(self):
        return self._labels


class Datasets:
    pass


def _idx(name, offset):
    with open(os.path.join(os.environ["MNIST_RAW"], name), "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def read_data_sets(_dir, one_hot=True, validation_size=5000):
    images = lambda name: _idx(name, 16).reshape(-1, 784).astype(np.float32) / 255.0
    labels = lambda name: np.eye(10, dtype=np.float32)[_idx(name, 8)] if one_hot else _idx(name, 8).astype(np.int64)
    x, y = images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte")
    out = Datasets()
    out.validation, out.train = DataSet(x[:validation_size], y[:validation_size]), DataSet(x[validation_size:], y[validation_size:])
    out.test = DataSet(images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte"))
    return out
'''


def port(source: Path, target: Path) -> None:
    """Copy their checkout to ``target`` and make the copy run on Python 3 and TensorFlow 2 (the module docstring)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".git"))
    for path in target.rglob("*.py"):
        text = path.read_text().expandtabs(8)
        text = re.sub(r"^import tensorflow as tf[ \t]*$", "import tensorflow.compat.v1 as tf; tf.disable_v2_behavior()",
                      text, flags=re.M)
        text = re.sub(r"^([ \t]*)print '(.*)'\.format\((.*)\)[ \t]*$", r"\1print('\2'.format(\3))", text, flags=re.M)
        text = text.replace("dtype=np.bool)", "dtype=bool)")
        path.write_text(text)
    edits = {
        "utils/data_utils.py": [("from tensorflow.examples.tutorials.mnist import input_data", "from . import input_data"),
                                ("\nimport cv2\n", "\ntry:\n    import cv2\nexcept ImportError:\n    cv2 = None\n"),
                                ("perm_inds = range(", "perm_inds = list(range("),
                                ("mnist.train.images.shape[1])\n", "mnist.train.images.shape[1]))\n")],
        "utils/vis_utils.py": [("with open(meta_file, 'wb') as f:", "with open(meta_file, 'w') as f:")],
        "model/model.py": [("from IPython import display", "display = None")],
    }
    for name, pairs in edits.items():
        path = target / name
        text = path.read_text()
        for old, new in pairs:
            if old not in text:
                raise SystemExit(f"{name}: {old!r} not found: not the facebookresearch/agem code this script ports")
            text = text.replace(old, new, 1)
        path.write_text(text)
    (target / "utils" / "input_data.py").write_text(INPUT_DATA)


def figures(matrix) -> dict:
    """Their accuracy matrix (row: after training task i; column: task j) read as our metrics read ours."""
    T = len(matrix)
    diagonal = [float(matrix[k][k]) for k in range(T)]
    return {"average_accuracy": float(sum(matrix[-1]) / T),
            "forgetting": statistics.mean(max(matrix[i][j] for i in range(T - 1)) - matrix[-1][j] for j in range(T - 1)),
            "accuracy_right_after_learning": statistics.mean(diagonal), "first_task": diagonal[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agem", required=True, type=Path, help="a checkout of facebookresearch/agem")
    parser.add_argument("--python", required=True, help="a Python with tensorflow, six and matplotlib")
    parser.add_argument("--methods", default="VAN,EWC,RWALK", help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--runs", type=int, default=5, help="their --num-runs (5 in replicate_results_iclr19.sh)")
    parser.add_argument("--examples-per-task", type=int, default=None,
                        help="their --examples-per-task (default: theirs, 1,000; the script passes none)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: got {', '.join(unknown)}; allowed: {', '.join(METHODS)}")
    raw = Path(args.data_dir or os.environ.get("CLCORE_DATA_DIR") or default_data_dir()) / "MNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte").exists():
        parser.error(f"--data-dir: no MNIST raw files in {raw}")
    out = []
    with tempfile.TemporaryDirectory(prefix="agem-") as tmp:
        code, logs = Path(tmp) / "agem", Path(tmp) / "logs"
        port(args.agem, code)
        logs.mkdir()
        env = {**os.environ, "MNIST_RAW": str(raw), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        for method in methods:
            lr, strength = METHODS[method]
            started = time.perf_counter()
            command = [args.python, "fc_permute_mnist.py", *COMMON, "--num-runs", str(args.runs), "--learning-rate",
                       str(lr), "--imp-method", method, "--synap-stgth", str(strength), "--cross-validate-mode",
                       "--log-dir", str(logs),
                       *(["--examples-per-task", str(args.examples_per_task)] if args.examples_per_task else [])]
            done = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{method}: their script failed:\n{done.stderr[-3000:]}")
            (snapshot,) = logs.glob(f"PERMUTE_MNIST_HERDING_*_{method}_*.pickle")
            runs = [figures(matrix.tolist()) for matrix in pickle.loads(snapshot.read_bytes())["mean"]]
            snapshot.unlink()
            row = {"method": method, "lr": lr, "synap_stgth": strength, "examples_per_task": args.examples_per_task or 1000,
                   "runs": len(runs),
                   "seconds": round(time.perf_counter() - started)}
            for key in runs[0]:
                xs = [r[key] for r in runs]
                row[key] = {"mean": round(statistics.mean(xs), 4),
                            "std": round(statistics.stdev(xs), 4) if len(xs) > 1 else None}
            out.append(row)
            print(f"{method:6s} lr {lr:<5} lambda {strength:<5} " + "  ".join(
                f"{key} {100 * row[key]['mean']:.1f}" + ("" if row[key]["std"] is None else f" ± {100 * row[key]['std']:.1f}")
                for key in runs[0]) + f"  ({len(runs)} runs, {row['seconds']} s)", flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

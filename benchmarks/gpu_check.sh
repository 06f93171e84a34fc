#!/usr/bin/env bash
# Every CUDA path of the project in one go, for a machine with a GPU (under 8 minutes on one GPU):
#
#   1. the CUDA-marked tests (tests/test_cuda.py: fused optimisers, the foreach penalty, bf16 autocast,
#      the Fisher estimators, RWalk, determinism and resume on the GPU, each against the CPU)
#   2. benchmarks/overhead.py --device cuda       EWC / RWalk step time over naive, Fisher vs a loop
#   3. benchmarks/throughput.py --device cuda     clcore.run vs a plain PyTorch loop (real MNIST)
#   4. a fractional-GPU sweep: 8 trials at resources.gpu 0.25 on a local Ray (4 share the GPU at once)
#
# and prints, last, one JSON line with the figures of each step. Logs go to $GPU_CHECK_OUT (default:
# a temporary folder, printed). A step that fails is recorded as such and the next one still runs;
# the exit status is 1 when any step failed.
#
#   benchmarks/gpu_check.sh                      # python from .venv when there is one, else python3
#   DATA_DIR=/path/to/datasets benchmarks/gpu_check.sh   # MNIST for the throughput step (else skipped)
#   DEVICE=cpu benchmarks/gpu_check.sh           # the script's own plumbing on a CPU (tiny sizes)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEVICE=${DEVICE:-cuda}
OUT=${GPU_CHECK_OUT:-$(mktemp -d -t clsweep-gpu-check-XXXX)}
DATA_DIR=${DATA_DIR:-${CLCORE_DATA_DIR:-../shared/datasets}}
mkdir -p "$OUT"
echo "gpu_check: device $DEVICE, logs in $OUT" >&2
export PYTHONUNBUFFERED=1
status=0

if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt" 2>&1 || true
    "$PY" -m pytest -q -rs -m cuda tests/test_cuda.py -p no:cacheprovider >"$OUT/cuda_tests.log" 2>&1 || status=1
    small=()
else  # CPU plumbing check: the CUDA tests skip; tiny benchmark sizes
    echo "CPU run: CUDA tests not run" >"$OUT/cuda_tests.log"
    small=(--rounds 3 --steps 2 --warmup 1 --fisher-repeats 1 --loop-samples 20 --fisher-samples 50)
fi

"$PY" benchmarks/overhead.py --device "$DEVICE" "${small[@]}" >"$OUT/overhead.log" 2>&1 || status=1

if [ -f "$DATA_DIR/MNIST/raw/train-images-idx3-ubyte" ] || [ -f "$DATA_DIR/MNIST/raw/train-images-idx3-ubyte.gz" ]; then
    repeats=(); [ "$DEVICE" = cpu ] && repeats=(--repeats 1 --train-samples-per-task 500 --n-tasks 2)
    "$PY" benchmarks/throughput.py --device "$DEVICE" --data-dir "$DATA_DIR" "${repeats[@]}" \
        >"$OUT/throughput.log" 2>&1 || status=1
else
    echo "skipped: no MNIST under $DATA_DIR (set DATA_DIR)" >"$OUT/throughput.log"
fi

# The fractional-GPU sweep: the quickstart file on the synthetic benchmark, 4 trials per GPU at once.
gpu=0.25; [ "$DEVICE" = cpu ] && gpu=0
CLSWEEP_STATE_DIR="$OUT/state" "$PY" -m sweeps.cli run search_spaces/quickstart.yaml \
    --set name=gpu_check --set "storage.path=$OUT/sweeps" --set tracking.mlflow=false \
    --set base.benchmark.name=synthetic --set base.benchmark.data_dir=null \
    --set "base.train.device=$DEVICE" \
    --set "resources.gpu=$gpu" --set resources.cpu=1 --set algorithm.num_samples=8 \
    --set algorithm.max_concurrent=4 --set scheduler=fifo >"$OUT/sweep.log" 2>&1
sweep_rc=$?
[ $sweep_rc -le 1 ] || status=1

"$PY" - "$OUT" "$DEVICE" "$status" "$sweep_rc" <<'EOF'
import json, re, sys
from pathlib import Path

out, device, status, sweep_rc = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


def last_json(name):
    lines = [l for l in (out / name).read_text(errors="replace").splitlines() if l.startswith("{")]
    try:
        return json.loads(lines[-1]) if lines else {"error": (out / name).read_text()[-300:]}
    except json.JSONDecodeError:
        return {"error": lines[-1][:300]}


tests = (out / "cuda_tests.log").read_text()
counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", tests)}
figures = {"device": device, "gpu": (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").exists() else None,
           "cuda_tests": counts or tests.strip()[-200:], "overhead": last_json("overhead.log")}
throughput = (out / "throughput.log").read_text()
figures["throughput"] = last_json("throughput.log") if not throughput.startswith("skipped") else throughput.strip()

sweep = {"exit_status": sweep_rc}
ledger = out / "sweeps" / "gpu_check" / "trials.jsonl"
if ledger.exists():
    rows = [json.loads(l) for l in ledger.read_text().splitlines() if l.strip()]
    events = sorted((r["time"], 1 if r["event"] == "start" else -1) for r in rows)
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    ends = [r for r in rows if r["event"] == "end"]
    sweep.update(trials=len({r["trial_id"] for r in rows}), ended={s: sum(r["status"] == s for r in ends)
                 for s in ("TERMINATED", "ERROR")}, most_at_once=most,
                 wall_s=round(max(r["time"] for r in rows) - min(r["time"] for r in rows), 1))
figures["fractional_gpu_sweep"] = sweep
figures["ok"] = status == 0
print(json.dumps(figures))
EOF
exit $status

#!/usr/bin/env bash
# The CUDA checks, as one short script for a lent GPU machine (CI never has one).
#
#   bash benchmarks/gpu_checks.sh OUTPUT_FOLDER
#
# 1. the demo pipeline with --device cuda (training with bf16 autocast and channels-last, failure
#    models, test cache, real-time and cached evaluation), timed step by step, in a scratch folder;
# 2. the cached and real-time results of that run compared (same decisions, same metrics);
# 3. the attacker benchmark against foolbox on the GPU, on the versions step 1 trained.
# Everything it prints and the run's metadata/CSVs go to OUTPUT_FOLDER (gpu_checks.log, gpu_run.tar.gz).
# foolbox is only needed for step 3; without it that step says so and the others still run.
set -u
out=${1:?usage: gpu_checks.sh OUTPUT_FOLDER}
mkdir -p "$out" && out=$(cd "$out" && pwd)
work=$(mktemp -d)
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
log="$out/gpu_checks.log"
device=${DEVICE:-cuda}
read -r -a extra <<<"${EXTRA:-}"  # e.g. EXTRA="--models squeezenet --epochs 1" DEVICE=cpu for a dry run
roots=(--model-root "$work/model" --info-root "$work/info" --device "$device" "${extra[@]}")
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

step() {  # step NAME COMMAND...: run, time and log one step; a failure is logged and the rest go on
    local name=$1; shift
    local started=$EPOCHREALTIME
    echo "=== $name: $*" | tee -a "$log"
    "$@" >>"$log" 2>&1
    local rc=$?
    echo "=== $name: exit $rc, $(elapsed "$started") s" | tee -a "$log"
}

{ nvidia-smi -L; "$python" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision",
torchvision.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'; } >>"$log" 2>&1
pipeline_started=$EPOCHREALTIME
step train "$python" main_train_model.py --preset demo "${roots[@]}" --quiet
step fit "$python" main_train_DeepFailGuard.py --preset demo "${roots[@]}" --output "$work/results" --quiet
step cache "$python" main_cache_test_distances.py --preset demo "${roots[@]}" --quiet
step realtime "$python" main_test_DeepFailGuard.py --preset demo "${roots[@]}" --output "$work/results/realtime" --quiet
step cached "$python" main_test_DeepFailGuard_from_cached.py --preset demo "${roots[@]}" --output "$work/results" --quiet
echo "=== pipeline total: $(elapsed "$pipeline_started") s" | tee -a "$log"
step compare "$python" - "$work/results" <<'EOF'
import csv, sys
from pathlib import Path
root = Path(sys.argv[1])
cached = list(csv.DictReader(open(root / "results.csv")))
realtime = list(csv.DictReader(open(root / "realtime" / "results.csv")))
assert len(cached) == len(realtime) > 0, (len(cached), len(realtime))
differing = [(a, b) for a, b in zip(cached, realtime) if a != b]
print(f"{len(cached)} result rows; {len(differing)} differ between the cached and the real-time evaluation")
for a, b in differing[:5]:
    print("cached:  ", a, "\nrealtime:", b)
sys.exit(1 if differing else 0)
EOF
read -r -a bench <<<"${BENCH_ARGS:---inputs 128 --repeats 3}"
step bench "$python" benchmarks/bench_attacker.py --device "$device" --model-root "$work/model" "${bench[@]}"
(cd "$work" && tar -czf "$out/gpu_run.tar.gz" model/*.json results) 2>>"$log"
grep '^===' "$log"

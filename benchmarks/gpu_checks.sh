#!/usr/bin/env bash
# The CUDA checks of issue 11, as ONE script for a lent GPU machine (CI never has one).
#
#   bash benchmarks/gpu_checks.sh [OUTPUT_FOLDER]            # default folder: $OUT (the device tool's)
#   bash benchmarks/gpu_checks.sh OUTPUT_FOLDER --dry-run    # every part with tiny sizes on the CPU (or DRY_RUN=1)
#
# Parts, in priority order (each one's table goes to OUTPUT_FOLDER/NAME.txt, its stderr to NAME.err):
#   env           card name (nvidia-smi, torch.cuda.get_device_name), torch/CUDA/cuDNN versions -> card.txt
#   precision32   item 1: SqueezeNet and ResNet-50 on DIGITS (32x32), bf16 autocast as the pipeline trains (with
#                 each architecture's float32_under_amp) and float32, seeds 42-45, with each run's dead classes
#                 (precision_accuracy.py; checkpoints kept in $work/m32)
#   diagnosis     item 1: SqueezeNet in bf16 everywhere (bf16-plain: no float32 head, as before the fix) and
#                 float32 repeated (run-to-run nondeterminism)
#   precision128  float32 SqueezeNet, ResNet-50, DenseNet-121 at the paper's 128x128, for the next parts
#   attack128     item 3: our DeepFool (CUDA graphs, the CUDA default) vs foolbox 3.3.4 and vs our eager step
#                 at 128x128, ResNet-50 and SqueezeNet, batch 32 and 128, all in full float32 (needs foolbox)
#   graphs_test   the CUDA-only tests: graphed and eager distances agree (tests/test_attacker.py -k cuda_graph)
#   graphs32      item 3: CUDA graphs on vs off at DIGITS' 32x32 (SqueezeNet, ResNet-50, batch 32 and 128)
#   latency       item 4: real-time DeepFailGuard vs majority voting, ms per input, batch 1 and 64, 128x128
#   training      item 2: training images/s, 5 architectures at 128x128, bf16+channels-last and float32,
#                 and the data path's share of the step, resized on the GPU and (the former way) on the host
#   precision32b  item 1 for DenseNet-121, AlexNet, VGG-16 (seed 42): the per-architecture AMP default
#   pipeline      optional (PIPELINE=1): the demo pipeline with --device cuda, timed, real-time vs cached compared
#
# Every part runs under `timeout`, its exit status and seconds logged (summary.txt); a failing part never stops
# the others. The whole run keeps to BUDGET seconds (default 700; dry run 900): a part gets at most what is left, and a
# part that would start with under 15 s left is skipped (logged as such). gpu_checks.log holds everything. The device
# tool returns at most 8 files: give a scratch folder and tar it into $OUT, e.g.
#   bash benchmarks/gpu_checks.sh /tmp/gc; tar czf "$OUT/gc.tar.gz" -C /tmp/gc .
# Measured on one H200 (2026-11-26, fewer seeds, no host-resize rows): 8.5 minutes; as it stands about 11
# (each part's seconds are in summary.txt). docs/results.md, "On a GPU", gives the results.
set -u
dry=${DRY_RUN:-0}
args=()
for arg in "$@"; do
    if [[ $arg == --dry-run ]]; then dry=1; else args+=("$arg"); fi
done
out=${args[0]:-${OUT:-}}
[[ -n $out ]] || { echo "usage: gpu_checks.sh OUTPUT_FOLDER [--dry-run] (or set OUT)" >&2; exit 2; }
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.." || exit 2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python=${PYTHON:-python3}
[[ -x .venv/bin/python && -z ${PYTHON:-} ]] && python=.venv/bin/python
export PYTHONUNBUFFERED=1
log="$out/gpu_checks.log"
summary="$out/summary.txt"
: >"$log"
: >"$summary"
budget=${BUDGET:-700}
[[ $dry == 1 ]] && budget=${BUDGET:-900}  # the CPU is slow; the dry run checks that every part completes
started_all=$EPOCHREALTIME
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
remaining() { awk -v a="$started_all" -v b="$EPOCHREALTIME" -v t="$budget" 'BEGIN { printf "%d", t - (b - a) }'; }

if [[ $dry == 1 ]]; then
    device=${DEVICE:-cpu}
    train_tiny=(--epochs 1 --max-train 16 --max-eval 20)
    p32=(--models squeezenet resnet "${train_tiny[@]}" --seeds 42)
    p32b=(--models densenet "${train_tiny[@]}" --seeds 42)
    diag=(--variants bf16-plain fp32-repeat "${train_tiny[@]}" --seeds 42)
    p128=(--models squeezenet resnet densenet --precisions fp32 --image-size 32 "${train_tiny[@]}" --seeds 42)
    attack=(--models squeezenet --batch-sizes 2 --inputs 2 --repeats 1 --image-size 32)
    graphs=(--models squeezenet --batch-sizes 2 --inputs 4 --repeats 1)
    training=(--models squeezenet --image-size 32 --steps 2 --warmup 1 --repeats 1)
    latency=(--image-size 32 --batch 4 --repeats 2 --train-epochs 0)
else
    device=${DEVICE:-cuda}
    p32=(--models squeezenet resnet --seeds 42 43 44 45)
    p32b=(--models densenet alexnet vgg16 --seeds 42)
    diag=(--variants bf16-plain fp32-repeat --seeds 42 43 44 45)
    p128=(--models squeezenet resnet densenet --precisions fp32 --seeds 42 --image-size 128)
    attack=(--models squeezenet resnet --batch-sizes 32 128 --inputs 128 --repeats 3 --image-size 128)
    graphs=(--models squeezenet resnet --batch-sizes 32 128 --inputs 128 --repeats 3)
    training=(--image-size 128 --steps 30 --warmup 10 --repeats 3 --resize-on device host)
    latency=(--image-size 128 --batch 64 --repeats 10 --train-epochs 2)
fi

part() {  # part NAME LIMIT_S COMMAND...: run under timeout, stdout -> NAME.txt, stderr -> NAME.err; log the status
    local name=$1 limit=$2; shift 2
    local left; left=$(remaining)
    if (( left < 15 )); then
        echo "=== $name: skipped, ${left} s of the ${budget} s budget left" | tee -a "$log" "$summary"
        return
    fi
    (( limit > left )) && limit=$left
    local started=$EPOCHREALTIME
    echo "=== $name (limit ${limit} s): $*" | tee -a "$log"
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.txt" 2>"$out/$name.err"
    local rc=$?
    cat "$out/$name.txt" >>"$log"
    [[ $rc == 0 ]] || tail -n 20 "$out/$name.err" >>"$log"
    local note=""; [[ $rc == 124 || $rc == 137 ]] && note=" (timed out)"
    echo "=== $name: exit $rc$note, $(elapsed "$started") s" | tee -a "$log" "$summary"
}

{
    echo "dry run: $dry; device: $device; budget: $budget s; started $(date -u +%FT%TZ) on $(hostname)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "no nvidia-smi"
    "$python" -c 'import torch, torchvision
print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version())
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA")
try:
    import foolbox; print("foolbox", foolbox.__version__)
except ImportError:
    print("foolbox missing: attack128 will fail")'
    nproc
} >"$out/card.txt" 2>&1
cat "$out/card.txt" | tee -a "$log"

m32="$work/m32"
m128="$work/m128"
part precision32 300 "$python" benchmarks/precision_accuracy.py --device "$device" --model-root "$m32" "${p32[@]}"
part diagnosis 150 "$python" benchmarks/bf16_diagnosis.py --device "$device" "${diag[@]}"
part precision128 100 "$python" benchmarks/precision_accuracy.py --device "$device" --model-root "$m128" "${p128[@]}"
part attack128 170 "$python" benchmarks/bench_attacker.py --device "$device" --model-root "$m128/fp32-seed42" \
    "${attack[@]}" --compare-graphs --no-profile
part graphs_test 60 "$python" -m pytest -q -p no:cacheprovider tests/test_attacker.py -k "cuda_graph"
part graphs32 120 "$python" benchmarks/bench_attacker.py --device "$device" --model-root "$m32/fp32-seed42" \
    "${graphs[@]}" --compare-graphs --no-foolbox --no-profile
part latency 80 "$python" benchmarks/bench_latency.py --device "$device" --model-root "$m128/fp32-seed42" \
    "${latency[@]}"
part training 120 "$python" benchmarks/bench_training.py --device "$device" "${training[@]}"
part precision32b 120 "$python" benchmarks/precision_accuracy.py --device "$device" --model-root "$m32" "${p32b[@]}"

if [[ ${PIPELINE:-0} == 1 ]]; then  # the first GPU run's checks (docs/results.md, "On a GPU"), on request only
    roots=(--model-root "$work/model" --info-root "$work/info" --device "$device")
    [[ $dry == 1 ]] && roots+=(--models squeezenet --epochs 1)
    part pipeline_train 120 "$python" main_train_model.py --preset demo "${roots[@]}" --quiet
    part pipeline_fit 60 "$python" main_train_DeepFailGuard.py --preset demo "${roots[@]}" --output "$work/results" \
        --quiet
    part pipeline_cache 60 "$python" main_cache_test_distances.py --preset demo "${roots[@]}" --quiet
    part pipeline_realtime 60 "$python" main_test_DeepFailGuard.py --preset demo "${roots[@]}" \
        --output "$work/results/realtime" --quiet
    part pipeline_cached 60 "$python" main_test_DeepFailGuard_from_cached.py --preset demo "${roots[@]}" \
        --output "$work/results" --quiet
    part pipeline_compare 30 "$python" -c 'import csv, sys
cached = list(csv.DictReader(open(sys.argv[1] + "/results.csv")))
realtime = list(csv.DictReader(open(sys.argv[1] + "/realtime/results.csv")))
differing = sum(a != b for a, b in zip(cached, realtime))
print(f"{len(cached)} cached, {len(realtime)} real-time result rows; {differing} differ")
sys.exit(1 if differing or len(cached) != len(realtime) or not cached else 0)' "$work/results"
fi

(cd "$work" && find . -name '*.json' -print0 | tar -czf "$out/checkpoint_metadata.tar.gz" --null -T -) 2>>"$log"
echo "=== total: $(elapsed "$started_all") s" | tee -a "$log" "$summary"
echo "--- summary"; cat "$summary"

#!/usr/bin/env bash
# One prepared script for a GPU machine; run from the repository root in the project's venv:
#
#   bash bench/gpu_check.sh [--dry-run] [--data DIR] [--only 1,7]
#
# 1. per-stage images/s at batch 64 and 512: the seed's loop, cbam-tui's defaults, --compile
# 2. one CIFAR-10-sized epoch (50,000 images, data on the GPU): time and peak GPU memory
# 3. the sync check: no host-device sync in the step loop except at log points
# 4. torch.compile: compile time per stage and recompiles when requires_grad flips
# 5. several processes: one epoch under the launcher (--nproc-per-node, NCCL) against
#    one process on the same GPU, and --sync-bn (one GPU is enough; all of them are used)
# 6. the transfer study at full size, with the seed's 5/15/30 epochs: the seed's plan, the
#    default and one stage, one seed (about 3 minutes on an H200; needs the real JPEGs)
# 7. what the dashboard costs a GPU run: headless against the dashboard in tmux, 3 alternating
#    pairs at batch 64 and at batch 512 (32x32), and the UI thread's share of the wall time
#
# Budgeted for about 11 minutes on an H100/H200 (--only: those checks alone; 7 takes about
# 6 minutes, with its noise pairs). --dry-run: tiny sizes on whatever
# device there is (the test suite runs it on the CPU so it cannot rot).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=""
DATA=""
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY="--dry-run" ;;
        --data) DATA="$2"; shift ;;
        --only) ONLY=",$2,"; shift ;;
        *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
PY=${PYTHON:-python}
want() { [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]]; }
echo "== machine"
# One interpreter for what the machine is, and (its last line) the device the checks use and
# how many GPUs check 5 starts processes on: each import of torch is seconds of the lease.
MACHINE=$($PY - <<'PY'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, cuda {torch.version.cuda}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}")
else:
    print("no CUDA device: the numbers below are CPU numbers")
print("cuda" if torch.cuda.is_available() else "cpu", max(1, torch.cuda.device_count()))
PY
)
read -r DEVICE NPROC <<< "${MACHINE##*$'\n'}"
echo "${MACHINE%$'\n'*}"

# Real JPEGs when they are at hand; otherwise the step table makes its own.
if [ -z "$DATA" ] && [ -d ../shared/data/cifar10-jpeg/train ]; then DATA=../shared/data/cifar10-jpeg; fi
STEP_ARGS=(--device "$DEVICE" --repeats 2 --warmup 10 --steps 60)
if [ -n "$DATA" ]; then STEP_ARGS+=(--data "$DATA"); else STEP_ARGS+=(--make-data 8000); fi
COMPILE=(--compile)
if [ -n "$DRY" ]; then STEP_ARGS=(--dry-run --device "$DEVICE"); COMPILE=(); fi  # check 4 covers compile

if want 1; then
echo "== 1a. images/s per stage, batch 64 (seed loop, defaults, --compile)"
$PY bench/train_step.py "${STEP_ARGS[@]}" --batch-size 64 "${COMPILE[@]}"
echo "== 1b. images/s per stage, batch 512"
if [ -n "$DRY" ]; then
    echo "(dry run: the same script as 1a with another batch size; skipped)"
else
    $PY bench/train_step.py "${STEP_ARGS[@]}" --batch-size 512 --repeats 1 --warmup 5 --steps 15
fi
fi
CHECKS=()
for n in 2:epoch 3:sync 4:compile; do want "${n%%:*}" && CHECKS+=("${n#*:}"); done
if [ ${#CHECKS[@]} -gt 0 ]; then $PY bench/gpu_check.py "${CHECKS[@]}" --device "$DEVICE" $DRY; fi
if want 5; then
echo "== 5. one process against --nproc-per-node (every GPU present, NCCL), one epoch of stage 3"
if [ -n "$DRY" ]; then
    $PY bench/ddp.py --dry-run --device "$DEVICE"
else
    DDP_DATA=(--limit 20000)
    if [ -n "$DATA" ]; then DDP_DATA+=(--data "$DATA"); fi
    $PY bench/ddp.py "${DDP_DATA[@]}" --device cuda --nproc "$NPROC" --batch-size 256 --repeats 1
    $PY bench/ddp.py "${DDP_DATA[@]}" --device cuda --nproc "$NPROC" --batch-size 256 --repeats 1 --sync-bn
fi
fi
if want 6; then
echo "== 6. the transfer study at full size: 32x32, all 25,000 images of the five classes, 5/15/30 epochs"
if [ -n "$DRY" ]; then
    echo "(dry run: tests/test_bench.py runs bench/transfer.py --dry-run; skipped)"
elif [ -z "$DATA" ]; then
    echo "(no CIFAR-10 JPEGs: --data DIR is needed for the study; skipped)"
else
    TRANSFER=(--device cuda --train-images 25000 --test-images 5000 --stage-epochs 5,15,30 --seeds 1
              --batch-size 256 --only 1,2,6 --out bench/transfer-results-gpu.md)
    $PY bench/transfer.py --data "$DATA" "${TRANSFER[@]}"
fi
fi
if want 7; then
echo "== 7. the dashboard's cost on the GPU: headless against the dashboard, batch 64 and 512"
if [ -n "$DRY" ]; then
    echo "(dry run: bench/dashboard.py needs tmux and minutes; skipped)"
elif ! command -v tmux >/dev/null 2>&1; then
    echo "(no tmux: apt-get install tmux; skipped)"
else
    # Headless against itself first (2 pairs each): on the one H200 lent so far, one run's
    # epochs differed by a fifth, so the pairs are read against that spread.
    $PY bench/dashboard.py --legs gpu64,gpu512 --pairs 3 --noise 2 --only pairs
fi
fi
echo "== done"

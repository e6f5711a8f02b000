#!/usr/bin/env bash
# One prepared device session for issues 12 and 13 (run through the device tool from the repository root, with
# .whl carried: see ../shared/tools/gpu-wheels.sh). Every step runs under its own timeout and writes its result
# into $OUT as it finishes, so a step that hangs or fails costs only its own budget. Total budget: ~6 minutes.
#
#   bash benchmarks/device_session.sh            # $OUT is set by the device tool
set -uo pipefail
OUT=${OUT:-runs/device_session}
mkdir -p "$OUT"
log="$OUT/session.log"
step() {  # step NAME SECONDS CMD...
    local name=$1 budget=$2; shift 2
    local start=$SECONDS
    echo "== $name (budget ${budget}s)" | tee -a "$log"
    timeout --signal=TERM --kill-after=5 "$budget" "$@" >>"$log" 2>&1
    echo "== $name: rc=$? in $((SECONDS - start)) s" | tee -a "$log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$log" 2>&1
# issue 12: the sync-free block step (raw forwards and the whole guided step), ring caches and the server's
# interleaved streams, on hardware
step gpu-tests 90 python3 -m pytest -q -m gpu -p no:cacheprovider tests/models/test_ring_cache.py \
    tests/sampling/test_hot_path.py tests/sampling/test_capture.py tests/serving/test_cuda_streams.py
# issue 12: captured student vs eager, and the compiled teacher, base preset at 4x4 (the per-block target)
step base-4x4 120 python3 benchmarks/device_check.py --preset base --grid 4x4 --backends cudagraphs inductor \
    --teacher-compile --out "$OUT/base_4x4.json"
# issue 12: the utilisation targets at LTX-2's token geometry (16x24)
step base-16x24 75 python3 benchmarks/device_check.py --preset base --grid 16x24 --backends cudagraphs \
    --teacher-compile --out "$OUT/base_16x24.json"
# issue 13: LTX-2 widths, a few of its 48 blocks, 512x768: per-block streaming time and Stage III peak memory
if [ -f benchmarks/ltx2_device_check.py ]; then
    step ltx2 60 python3 benchmarks/ltx2_device_check.py --out "$OUT/ltx2.json"
fi
tail -c 20000 "$log" > "$OUT/session_tail.log"

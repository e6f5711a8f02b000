#!/usr/bin/env bash
# The Mutual Forcing results of docs/mutual_forcing.md, re-measured over seeds (issue 14 item 1):
# for each seed, the three Mutual Forcing stages with the default history (from the real clip noised to s in
# {1, 0.75}), with the `history_from_noise` ablation and with `history_from_clip_low_noise` (s in {0.75, 0.5, 0.25},
# the default before 2026-12-05), the OmniForcing chain at the same size (its teacher is the teacher row), then the
# quality table of each. Training and sampling share the seed. Resumable: a finished run is skipped.
#
#   bash benchmarks/mutual_forcing_seeds.sh [OUT=runs/mutual_forcing_seeds] [SEEDS="0 1 2"]
#   python -m omniforcing.bench.mutual_forcing summarize --runs runs/mutual_forcing_seeds   # mean, spread, floor
#
# Budgets are those of the one-seed table before it: 600 + 600 + 1200 steps (Mutual Forcing), teacher 1200 +
# Stage I 300 + 256 ODE pairs + Stage II 300 + Stage III 150 (OmniForcing), tiny preset, batch 4, 2-s clips.
set -euo pipefail
OUT=${1:-runs/mutual_forcing_seeds}
SEEDS=${2:-"0 1 2"}
PY=${PYTHON:-python}
UNI=${UNI_STEPS:-600} JOINT=${JOINT_STEPS:-1200} TEACHER=${TEACHER_STEPS:-1200} STAGE=${STAGE_STEPS:-300}
PAIRS=${PAIRS:-256} STAGE3=${STAGE3_STEPS:-150} CLIPS=${CLIPS:-32}   # smaller values: a smoke run of this script
export OMP_NUM_THREADS=1
TEXT='["--model.init_args.network.init_args.text_max_length=64"]'
ABLATION='["--model.init_args.network.init_args.text_max_length=64", "-c", "recipes/mutual_forcing/ablations/history_from_noise.yaml"]'
LOW_NOISE='["--model.init_args.network.init_args.text_max_length=64", "-c", "recipes/mutual_forcing/ablations/history_from_clip_low_noise.yaml"]'
mkdir -p "$OUT"

mutual_forcing() {  # $1 out, $2 seed, $3 overrides
    [ -f "$1/summary.json" ] && return 0
    $PY -m omniforcing.pipelines.mutual_forcing --out "$1" --steps $UNI --joint_steps $JOINT --seconds 2 \
        --stream_seconds 2 --batch_size 4 --threads 1 --seed "$2" --overrides "$3"
}

omniforcing() {  # $1 out, $2 seed
    [ -f "$1/pipeline.json" ] && grep -q '"stage3"' "$1/pipeline.json" && return 0
    $PY -m omniforcing.pipelines.omniforcing --out "$1" --model tiny --seconds 2 --batch_size 4 \
        --teacher_steps $TEACHER --stage1_steps $STAGE --pairs $PAIRS --ode_steps 24 --stage2_steps $STAGE \
        --stage3_steps $STAGE3 \
        --stream_seconds 2 --seed "$2" --threads 1 --overrides "$TEXT"
}

checkpoint() {  # $1 pipeline.json, $2 key
    $PY -c "import json,sys; print(json.load(open(sys.argv[1]))['checkpoints'][sys.argv[2]])" "$1" "$2"
}

quality() {  # $1 json out, $2 seed, rest: arguments
    local json=$1 seed=$2; shift 2
    [ -f "$json" ] && return 0
    $PY -m omniforcing.bench.mutual_forcing quality --clips $CLIPS --multi_steps 48 --seed "$seed" \
        --cache_dir "$OUT/seed$seed/metric_cache" --json_out "$json" "$@"
}

for seed in $SEEDS; do
    mutual_forcing "$OUT/seed$seed/history_from_clip" "$seed" "$TEXT"
    mutual_forcing "$OUT/seed$seed/history_from_noise" "$seed" "$ABLATION"
    mutual_forcing "$OUT/seed$seed/history_from_clip_low_noise" "$seed" "$LOW_NOISE"
    omniforcing "$OUT/seed$seed/omniforcing" "$seed"
    OF="$OUT/seed$seed/omniforcing/pipeline.json"
    quality "$OUT/seed$seed/quality_history_from_clip.json" "$seed" \
        --checkpoint "$OUT/seed$seed/history_from_clip/exported" \
        --teacher "$(checkpoint "$OF" teacher)" --teacher_cfg '[1.0, 3.0]' --student "$(checkpoint "$OF" stage3)"
    quality "$OUT/seed$seed/quality_history_from_noise.json" "$seed" \
        --checkpoint "$OUT/seed$seed/history_from_noise/exported"
    quality "$OUT/seed$seed/quality_history_from_clip_low_noise.json" "$seed" \
        --checkpoint "$OUT/seed$seed/history_from_clip_low_noise/exported"
done

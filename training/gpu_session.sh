#!/usr/bin/env bash
# What to run on a lent GPU (the device tool), one phase per call; each phase ends within 10 minutes.
# Runbook: docs/gpu_runbook.md. Logs and results go to $OUT (at most 8 files of 16 MB come back).
#   bash training/gpu_session.sh bench|model|ablation|realrun
# Every phase starts with `setup` (wheels, data links), so a machine that went cold only needs its
# carried folders again; `train.py --resume` makes a re-run after a late failure continue, not restart.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT" runs
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
DATA=data_local/ferplus

setup() {  # wheels the device image lacks (open_clip, ftfy, wcwidth) and one data folder from the carried parts
    if [ -d .whl ] && [ ! -d /tmp/site/open_clip ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi
    mkdir -p "$DATA"
    for f in data_local/ferplus_train/*.npz data_local/ferplus_eval/*.npz; do
        if [ -e "$f" ]; then ln -sf "$(realpath "$f")" "$DATA/$(basename "$f")"; fi
    done
    ls "$DATA"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
}

phase=${1:?phase: bench|model|ablation|realrun}
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
setup 2>&1 | tee "$OUT/$phase.log"
case "$phase" in
    bench)  # issue 3: ViT-B/16 images/s, eager at four batch sizes, then compiled at one
        python3 training/bench_gpu.py --batch-sizes 32 64 128 256 2>&1 | tee -a "$OUT/$phase.log"
        python3 training/bench_gpu.py --compile --batch-sizes 128 2>&1 | tee -a "$OUT/$phase.log" ;;
    model)  # issue 4: stage 0, stage 1, bundle, test accuracy; the bundle comes back in <16 MB parts
        if [ ! -f runs/stage0/open_clip_model.safetensors ]; then
            python3 training/pretrain_backbone.py --data "$DATA" --out runs/stage0 --model "${MODEL:-mpafer-face-vit}" \
                --epochs "${EPOCHS0:-80}" --batch-size 256 2>&1 | tee -a "$OUT/$phase.log"
        fi
        python3 training/train.py --config training/configs/ferplus_default.yaml --data "$DATA" --out runs/stage1 \
            --resume --no-progress 2>&1 | tee -a "$OUT/$phase.log"
        python3 training/bundle_default_model.py runs/stage1/best assets/models/mpafer-ferplus-default \
            2>&1 | tee -a "$OUT/$phase.log"
        python3 -m mpafer evaluate --dataset ferplus --data "$DATA" --split test --json > "$OUT/test.json"
        python3 -m mpafer evaluate --dataset ferplus --data "$DATA" --split test --tta-flip --json \
            --confusion "$OUT/confusion.png" > "$OUT/test_flip.json"
        tar -cf - assets/models/mpafer-ferplus-default runs/stage0/*.json runs/stage0/*.csv runs/stage1/metrics.csv \
            runs/stage1/test_metrics.json | split -b 15M - "$OUT/default_model.tar.part-" ;;
    ablation)  # issue 4's table; needs runs/stage0 from a 'model' call on this (still warm) machine
        python3 training/ablation.py --config training/configs/ferplus_default.yaml --data "$DATA" --device cuda \
            --out runs/ablation --epochs "${EPOCHS:-15}" 2>&1 | tee -a "$OUT/$phase.log"
        cp runs/ablation/ablation.md runs/ablation/ablation.json "$OUT/" ;;
    realrun)  # issue 3: a short real run of the paper's ViT-B/16 config (random weights: offline) on FERPlus
        python3 training/train.py --config training/configs/ferplus_vitb16.yaml --data "$DATA" --out runs/vitb16_random \
            --set model.backbone.pretrained=null --epochs "${EPOCHS:-3}" --resume --no-progress 2>&1 | tee -a "$OUT/$phase.log" ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# What to run on a lent GPU (the device tool), one phase per call (each must end within 10 minutes).
# The runbook is docs/gpu_runbook.md. Every log and result goes to $OUT (default runs/gpu).
#   bash training/gpu_session.sh setup|bench|stage0|stage1|ablation|realrun
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT" runs
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
DATA=data_local/ferplus

setup() {  # wheels that the device image lacks (open_clip and its tokenizer's ftfy), and the data folder
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi
    mkdir -p "$DATA"
    for f in data_local/ferplus_train/*.npz data_local/ferplus_eval/*.npz; do
        [ -e "$f" ] && ln -sf "$(realpath "$f")" "$DATA/$(basename "$f")"
    done
    ls -la "$DATA"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
}

phase=${1:?phase: setup|bench|stage0|stage1|ablation|realrun}
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
case "$phase" in
    setup) setup 2>&1 | tee "$OUT/setup.log" ;;
    bench) python3 training/bench_gpu.py --compile 2>&1 | tee "$OUT/bench_gpu.log" ;;
    stage0) python3 training/pretrain_backbone.py --data "$DATA" --out runs/stage0 --model "${MODEL:-mpafer-face-vit}" \
                --epochs "${EPOCHS:-80}" --batch-size 256 2>&1 | tee "$OUT/stage0.log"
            cp runs/stage0/pretrain_summary.json runs/stage0/pretrain_metrics.csv "$OUT/" ;;
    stage1) python3 training/train.py --config training/configs/ferplus_default.yaml --data "$DATA" --out runs/stage1 \
                --no-progress 2>&1 | tee "$OUT/stage1.log"
            python3 training/bundle_default_model.py runs/stage1/best assets/models/mpafer-ferplus-default | tee -a "$OUT/stage1.log"
            python3 -m mpafer evaluate --dataset ferplus --data "$DATA" --split test --json > "$OUT/test.json"
            python3 -m mpafer evaluate --dataset ferplus --data "$DATA" --split test --tta-flip --json \
                --confusion "$OUT/confusion.png" > "$OUT/test_flip.json"
            tar -cf "$OUT/default_model.tar" -C assets/models mpafer-ferplus-default ;;
    ablation) python3 training/ablation.py --config training/configs/ferplus_default.yaml --data "$DATA" \
                --out runs/ablation --epochs "${EPOCHS:-20}" 2>&1 | tee "$OUT/ablation.log"
              cp runs/ablation/ablation.md runs/ablation/ablation.json "$OUT/" ;;
    realrun) python3 training/train.py --config training/configs/ferplus_vitb16.yaml --data "$DATA" --out runs/vitb16_random \
                --set model.backbone.pretrained=null --epochs "${EPOCHS:-3}" --no-progress 2>&1 | tee "$OUT/realrun.log" ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
esac

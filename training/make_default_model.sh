#!/usr/bin/env bash
# The offline default model, end to end (run on a GPU machine; see assets/models/README.md once it exists).
#   bash training/make_default_model.sh /path/to/ferplus
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: make_default_model.sh FERPLUS_PACK_DIR}
MODEL=${MODEL:-mpafer-face-vit}
python training/pretrain_backbone.py --data "$DATA" --out runs/stage0 --model "$MODEL" --epochs "${STAGE0_EPOCHS:-80}" --batch-size 256
python training/train.py --config training/configs/ferplus_default.yaml --data "$DATA" --out runs/stage1 \
    --set model.backbone.model_name=local-dir:runs/stage0
python training/bundle_default_model.py runs/stage1/best assets/models/mpafer-ferplus-default
python -m mpafer evaluate --dataset ferplus --data "$DATA" --split test --json
python -m mpafer evaluate --dataset ferplus --data "$DATA" --split test --tta-flip --json

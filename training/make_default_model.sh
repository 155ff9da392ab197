#!/usr/bin/env bash
# The offline default model, end to end, on a CPU (this project's 2-core machine: see the model card).
#   bash training/make_default_model.sh ../shared/data/ferplus
# Every step resumes: re-running the same command after a crash or `kill -9` continues where it stopped
# (at most the current epoch is lost). Run folders live in runs/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: make_default_model.sh FERPLUS_PACK_DIR}
RUNS=${RUNS:-runs}
BUNDLE=${BUNDLE:-assets/models/mpafer-ferplus-default}
PY=${PYTHON:-python}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-ACTIVE}  # keep the 2 training threads on their cores
# The defaults make the bundled model: the deep-stem tower, seed 1 (chosen on validation; README, "A deeper
# convolutional stem").

# stage 0: the compact image tower against frozen all-MiniLM-L6-v2 (about 61 minutes here, 2026-12-06)
# (a finished stage-0 folder is kept as it is: its pretrain_summary.json is written last)
[ -s "$RUNS/stage0/pretrain_summary.json" ] || \
    $PY training/pretrain_backbone.py --data "$DATA" --out "$RUNS/stage0" --epochs "${STAGE0_EPOCHS:-24}" \
        --model "${STAGE0_MODEL:-mpafer-face-minilm-deepstem}" --rotate "${STAGE0_ROTATE:-0}" --seed "${SEED:-1}" --ema-decay "${STAGE0_EMA:-0}" \
        --class-mean-weight "${STAGE0_CLASS_MEAN_WEIGHT:-1}" --text-image-weight "${STAGE0_TEXT_IMAGE_WEIGHT:-0}"
# stage 1: MPA-FER prompts on the frozen stage-0 backbone (CE + L_t + L_v, CGLA)
$PY training/train.py --config training/configs/ferplus_default.yaml --data "$DATA" --out "$RUNS/stage1" \
    --set "model.backbone.model_name=local-dir:$RUNS/stage0" "seed=${SEED:-1}" --resume
# the crop the model wants from a face detector, measured on validation faces
[ -s "$RUNS/crop_protocol.json" ] || \
    $PY training/crop_protocol.py calibrate --data "$DATA" --split valid --limit 1000 --no-progress > "$RUNS/crop_protocol.json"
$PY training/bundle_default_model.py "$RUNS/stage1/best" "$BUNDLE" --protocol "$RUNS/crop_protocol.json"
# each description's score distribution over validation faces: calibrated region scores in the demo
$PY training/calibrate_descriptions.py --data "$DATA" --checkpoint "$BUNDLE" --limit 1000
# validation accuracy of the bundle: what a new default is compared with the old one on (never test)
MPAFER_CHECKPOINT="$BUNDLE" $PY -m mpafer evaluate --dataset ferplus --data "$DATA" --split valid --json \
    > "$RUNS/valid_metrics.json"
# the model card's numbers, all from the bundle
MPAFER_CHECKPOINT="$BUNDLE" $PY -m mpafer evaluate --dataset ferplus --data "$DATA" --split test --json \
    --confusion "$BUNDLE/confusion.png" > "$RUNS/test_metrics.json"
$PY training/paraphrase_probe.py --data "$DATA" --checkpoint "$BUNDLE" --json > "$RUNS/paraphrases.json"
$PY training/paraphrase_probe.py --data "$DATA" --checkpoint "$BUNDLE" --scoring centred --json \
    > "$RUNS/paraphrases_centred.json"
# the whole Predictor pipeline (detector, crop, model) on test faces upscaled to 256 px and padded
$PY training/crop_protocol.py pipeline --data "$DATA" --checkpoint "$BUNDLE" --no-progress --json > "$RUNS/pipeline.json"
# CPU time per face (run on a quiet machine: it is a timing)
$PY training/bench_face_latency.py --checkpoint "$BUNDLE" --json > "$RUNS/latency.json"
$PY training/write_model_card.py --bundle "$BUNDLE" --runs "$RUNS"

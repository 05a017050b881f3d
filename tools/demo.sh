#!/usr/bin/env bash
# The offline demo behind `make demo`: synthetic MEG -> pre-training -> validation -> features.
# Expects the virtualenv's bin/ first on PATH (the Makefile does that).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=manifests/demo
OUT=demo_out
rm -rf "$DATA" "$OUT"
mkdir -p "$OUT"

echo "== 1/5 synthetic MEG (306 channels, 250 Hz) -> $DATA"
# 48 x 40 s: with 12 recordings the 600 updates (50 passes over 8 minutes) memorised them
# (training vs validation accuracy 0.69 vs 0.37; docs/pretraining.md, "How much data").
# float16 on disk: 48 recordings in the bytes of 24.
python tools/make_demo_data.py --dest "$DATA" --recordings 48 --seconds 40 --dtype float16

echo "== 2/5 pre-training the tiny meg2vec with fairseq (CPU, a few hundred updates)"
fairseq-hydra-train --config-dir config/pretraining --config-name meg2vec_tiny \
  common.user_dir=meg2vec_fairseq task.data="$DATA" \
  checkpoint.save_dir="$OUT/checkpoints" 2>&1 | tee "$OUT/train.log" | grep -E "train_inner|valid\]" || true
test -f "$OUT/checkpoints/checkpoint_best.pt" || { echo "training failed: see $OUT/train.log"; exit 1; }

echo "== 3/5 fairseq-validate on the validation recordings"
fairseq-validate "$DATA" --user-dir meg2vec_fairseq --task meg_pretraining \
  --path "$OUT/checkpoints/checkpoint_best.pt" --valid-subset valid --max-tokens 10000 \
  > "$OUT/validate.log" 2>&1 || { cat "$OUT/validate.log"; exit 1; }

echo "== 4/5 contextual features of the validation segments"
python tools/extract_features.py --checkpoint "$OUT/checkpoints/checkpoint_best.pt" \
  --manifest "$DATA/valid.tsv" --dest "$OUT/features" 2>/dev/null

echo "== 5/5 is it learning? (tools/check_pretraining.py on the training log)"
# exit 3 reports a problem with the run, which the demo shows rather than fails on
python tools/check_pretraining.py "$OUT/train.log" || [ $? -eq 3 ]

echo
echo "== summary"
python tools/demo_summary.py "$OUT/train.log" "$OUT/validate.log"
cat <<TXT

outputs:
  manifests + segments   $DATA/{train,valid}.tsv, $DATA/segments/
  checkpoints            $OUT/checkpoints/checkpoint_{best,last}.pt
  training log           $OUT/train.log
  validation log         $OUT/validate.log
  features (frames x dim) $OUT/features/ (index: $OUT/features/features.tsv)
TXT

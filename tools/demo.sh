#!/usr/bin/env bash
# The offline demo behind `make demo`: synthetic MEG -> pre-training -> validation -> features.
# Expects the virtualenv's bin/ first on PATH (the Makefile does that).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=manifests/demo
OUT=demo_out
rm -rf "$DATA" "$OUT"
mkdir -p "$OUT"

echo "== 1/4 synthetic MEG (306 channels, 250 Hz) -> $DATA"
python tools/make_demo_data.py --dest "$DATA" --recordings 12 --seconds 40

echo "== 2/4 pre-training the tiny meg2vec with fairseq (CPU, a few hundred updates)"
fairseq-hydra-train --config-dir config/pretraining --config-name meg2vec_tiny \
  common.user_dir=meg2vec_fairseq task.data="$DATA" \
  checkpoint.save_dir="$OUT/checkpoints" 2>&1 | tee "$OUT/train.log" | grep -E "train_inner|valid\]" || true
test -f "$OUT/checkpoints/checkpoint_best.pt" || { echo "training failed: see $OUT/train.log"; exit 1; }

echo "== 3/4 fairseq-validate on the validation recordings"
fairseq-validate "$DATA" --user-dir meg2vec_fairseq --task meg_pretraining \
  --path "$OUT/checkpoints/checkpoint_best.pt" --valid-subset valid --max-tokens 10000 \
  > "$OUT/validate.log" 2>&1 || { cat "$OUT/validate.log"; exit 1; }

echo "== 4/4 contextual features of the validation segments"
python tools/extract_features.py --checkpoint "$OUT/checkpoints/checkpoint_best.pt" \
  --manifest "$DATA/valid.tsv" --dest "$OUT/features" 2>/dev/null

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

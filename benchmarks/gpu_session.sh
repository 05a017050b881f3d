#!/usr/bin/env bash
# One visit to the GPU machine (16 cores, 1 GPU, no package index): the objective ablation
# (docs/pretraining_research.md) and the clean-exit / AMP checks (benchmarks/gpu_checks.py).
#
# Needs the wheels of ../shared/gpu/RECIPE.md in .whl/ (carried; git-ignored). Usage there:
#   bash benchmarks/gpu_session.sh "$OUT" [MAX_UPDATE] [BUDGET_MINUTES]
# Everything it brings back lies in OUT: ablation.md/json, gpu_checks.txt, logs.tgz.
set -u
OUT=${1:?usage: gpu_session.sh OUT [MAX_UPDATE] [BUDGET_MINUTES]}
MAX_UPDATE=${2:-1500}
BUDGET=${3:-3}
VARIANTS=${4:-benchmarks/variants_objectives.json}
mkdir -p "$OUT"
source "$(dirname "$0")/gpu_env.sh"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; date -u) \
  > "$OUT/machine.txt" 2>&1

# clean exit and AMP: small data, run beside the ablation's pre-training
python3 tools/make_demo_data.py --dest /tmp/gc_data --recordings 6 --seconds 20 \
  --valid-recordings 1 > /dev/null
[ -n "${SKIP_CHECKS:-}" ] || python3 benchmarks/gpu_checks.py --data /tmp/gc_data --out /tmp/gpu_checks --max-update 60 \
  --parallel > "$OUT/gpu_checks.txt" 2>&1 &

timeout ${ABLATION_TIMEOUT:-520} python3 benchmarks/ablation.py --out /tmp/abl \
  --variants "$VARIANTS" --pretrain-seeds 1 2 \
  --max-update "$MAX_UPDATE" --budget-minutes "$BUDGET" --parallel 18 --threads 1 \
  --set dataset.num_workers=0 --seeds 0 1 2 > "$OUT/ablation.txt" 2>&1
echo "ablation rc $?" >> "$OUT/ablation.txt"
wait
cp /tmp/abl/ablation.md /tmp/abl/ablation.json "$OUT/" 2>/dev/null
tar czf "$OUT/logs.tgz" -C /tmp --exclude='*.pt' --exclude='*.npy' --exclude='data' \
  abl gpu_checks 2>/dev/null
ls -la "$OUT"

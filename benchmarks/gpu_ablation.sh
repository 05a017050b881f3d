#!/usr/bin/env bash
# One GPU visit (16 cores, 1 GPU, no package index) for an objective round on several generator
# settings at once (docs/pretraining_research.md, round 17 on): many small pre-training runs
# side by side, their linear probes, then 10 % fine-tuning of every checkpoint and of
# random-init for as long as the time allows.
#
# Usage there (needs the wheels of ../shared/gpu/RECIPE.md in .whl/, carried):
#   bash benchmarks/gpu_ablation.sh OUT MAX_UPDATE VARIANTS "SEEDS" [DEADLINE_S]
# Settings (env SETTINGS, names from the list below; default "gen1 gen2"):
#   gen1: first generator setting, strong state;  gen2: second setting, strong state;
#   gen3: third setting (weak events, broad rhythms; round 26);
#   gen4: fourth setting (weaker events outside the top principal components, weak state;
#   round 30i).
# Phase 1: benchmarks/ablation.py per setting, all settings at once (PARALLEL processes in all).
# Phase 2: benchmarks/probe_synthetic.py --finetune-fractions 0.1 per checkpoint and once for
#   random-init, until DEADLINE_S seconds after the start (default 520); unfinished jobs are cut.
# Brings back in OUT: summary.txt (the tables), results.tgz (every JSON and log, no weights) and
# ckpt-<setting>-<variant>.tar (the checkpoints of the SAVE_VARIANTS without optimizer state).
# EXTRA_ARGS: more benchmarks/ablation.py options for phase 1, e.g. "--only shipped --config
#   meg2vec_small --set lr_scheduler.warmup_updates=150" (another config needs its warm-up
#   scaled to MAX_UPDATE: the yamls' warm-up is for their full schedule).
# PRETRAIN_ONLY=1: phase 1 pre-trains only (evaluate the brought-back checkpoints elsewhere with
#   ablation.py --reuse-checkpoints); phase 2 is skipped.
# FINETUNE=0: phase 1 as usual (pre-training and linear probes), phase 2 skipped (leaves the
#   cores to another instance of this script in the same call).
# One call brings back a limited number of files (8 in round 28; the rest are listed as left
#   out): with two instances in a call, send their logs into OUT/<name>/ or drop SAVE_VARIANTS.
# DATA_DIR: where the synthetic data go (default WORK/data); instances of this script in one
#   call that pre-train on the same setting and corpus size can share one (the generator builds
#   into a temporary folder and renames it, so concurrent builds do not clash).
# Try it on CPU first: DEVICE=cpu bash benchmarks/gpu_ablation.sh /tmp/o 3 V "1" 400
set -u
OUT=${1:?usage: gpu_ablation.sh OUT MAX_UPDATE VARIANTS "SEEDS" [DEADLINE_S]}
MAX_UPDATE=${2:?}
VARIANTS=${3:?}
SEEDS=${4:?}
DEADLINE=${5:-520}
SETTINGS=${SETTINGS:-gen1 gen2}
PARALLEL=${PARALLEL:-16}
BUDGET_MINUTES=${BUDGET_MINUTES:-5}
DEVICE=${DEVICE:-auto}
START=$(date +%s)
WORK=${WORK:-/tmp/round}
DATA_DIR=${DATA_DIR:-$WORK/data}
mkdir -p "$OUT" "$WORK"
source "$(dirname "$0")/gpu_env.sh"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; date -u) \
  > "$OUT/machine.txt" 2>&1

setting_args() {
  case "$1" in
    gen1) echo "--state-alpha-suppression 0.4 --state-response 0.15" ;;
    gen2) echo "--state-alpha-suppression 0.4 --state-response 0.15 --event-snr 1.5" \
               "--rhythm-bandwidth 1.0 --generator-seed 4321" ;;
    gen3) echo "--state-alpha-suppression 0.3 --state-response 0.10 --event-snr 1.0" \
               "--rhythm-bandwidth 3.0 --generator-seed 777" ;;
    gen4) echo "--state-alpha-suppression 0.2 --state-response 0.08 --event-snr 0.7" \
               "--rhythm-bandwidth 1.0 --generator-seed 999" ;;
    *) echo "unknown setting $1" >&2; exit 2 ;;
  esac
}
n_settings=$(echo $SETTINGS | wc -w)
per_setting=$(( (PARALLEL + n_settings - 1) / n_settings ))

# phase 1: pre-training and linear probes, every setting at once
for s in $SETTINGS; do
  timeout $((DEADLINE - 60)) python3 benchmarks/ablation.py --out "$WORK/$s" \
    --data-dir "$DATA_DIR" --variants "$VARIANTS" --pretrain-seeds $SEEDS \
    --max-update "$MAX_UPDATE" --budget-minutes "$BUDGET_MINUTES" --parallel $per_setting \
    --threads 1 --device "$DEVICE" --set dataset.num_workers=0 --seeds 0 1 2 \
    --finetune-fractions $(setting_args $s) ${PRETRAIN_ONLY:+--pretrain-only} ${EXTRA_ARGS:-} \
    > "$WORK/ablation-$s.txt" 2>&1 &
done
wait
echo "phase 1 done at $(( $(date +%s) - START )) s" | tee -a "$OUT/summary.txt"
for s in $SETTINGS; do
  { echo "## $s"; cat "$WORK/$s/ablation.md" 2>/dev/null || tail -20 "$WORK/ablation-$s.txt"; } \
    >> "$OUT/summary.txt"
done

# phase 2: 10 % fine-tuning, checkpoints and random-init, until the deadline
jobs_file="$WORK/ft_jobs.txt"; : > "$jobs_file"
for s in $SETTINGS; do
  common="--data-dir $DATA_DIR --evaluate checkpoint --reuse-checkpoint --tasks event state"
  common="$common --layers last --seeds 0 1 2 --finetune-fractions 0.1 --threads 1"
  common="$common --device $DEVICE $(setting_args $s)"
  first=""
  for run in "$WORK/$s"/runs/*; do
    [ -d "$run" ] || continue
    for seed_dir in "$run"/seed-*; do
      [ -f "$seed_dir/checkpoints/checkpoint_last.pt" ] || continue
      seed=${seed_dir##*/seed-}
      ft="$WORK/ft/$s/$(basename "$run")"
      mkdir -p "$ft"; ln -sfn "$seed_dir" "$ft/seed-$seed"
      echo "python3 benchmarks/probe_synthetic.py --out $ft --pretrain-seeds $seed $common" \
        >> "$jobs_file"
      first=${first:-$seed_dir/checkpoints/checkpoint_last.pt}
    done
  done
  shipped="$WORK/$s/runs/shipped-s${SEEDS%% *}/seed-${SEEDS%% *}/checkpoints/checkpoint_last.pt"
  [ -f "$shipped" ] || shipped=$first
  [ -n "$shipped" ] && echo "python3 benchmarks/probe_synthetic.py --out $WORK/ft/$s/baselines \
    --random-init-from $shipped ${common/--evaluate checkpoint --reuse-checkpoint/--evaluate baselines}" \
    >> "$jobs_file"
done
left=$(( DEADLINE - ($(date +%s) - START) - 20 ))
[ -z "${PRETRAIN_ONLY:-}" ] || left=0
[ "${FINETUNE:-1}" != 0 ] || left=0
if [ $left -gt 30 ]; then
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  # random-init first: without it the checkpoints' numbers have nothing to compare with
  { grep -- '--evaluate baselines' "$jobs_file"; grep -v -- '--evaluate baselines' "$jobs_file"; } |
    timeout $left xargs -d '\n' -n 1 -P "$PARALLEL" sh -c 'eval "$1" > /dev/null 2>&1' _
fi
echo "phase 2 done at $(( $(date +%s) - START )) s" | tee -a "$OUT/summary.txt"
for t in "$WORK"/ft/*/*/table.md; do
  [ -f "$t" ] && { echo "### ${t#$WORK/ft/}"; cat "$t"; } >> "$OUT/summary.txt"
done

# bring back: tables, every JSON and log (no weights), chosen checkpoints without optimizer state
tar czf "$OUT/results.tgz" -C "$WORK" --exclude='*.pt' --exclude='*.npy' --exclude=data . \
  2>/dev/null
# one tar per setting and variant (two tiny checkpoints stay under 16 MiB; '+' not in names)
for s in $SETTINGS; do
  for v in ${SAVE_VARIANTS:-}; do
    mkdir -p "$WORK/strip/$s/$v"
    for ck in "$WORK/$s/runs/$v"-s*/seed-*/checkpoints/checkpoint_last.pt; do
      [ -f "$ck" ] || continue
      name=$(echo "$ck" | sed "s|$WORK/$s/runs/||; s|/checkpoints/checkpoint_last.pt||; s|/|_|g")
      python3 -c "import sys, torch; c = torch.load(sys.argv[1], map_location='cpu', \
weights_only=False); c.pop('last_optimizer_state', None); torch.save(c, sys.argv[2])" \
        "$ck" "$WORK/strip/$s/$v/$name.pt"
    done
    tar cf "$OUT/ckpt-$s-${v//+/_}.tar" -C "$WORK/strip" "$s/$v"
  done
done
echo "total $(( $(date +%s) - START )) s" | tee -a "$OUT/summary.txt"
ls -la "$OUT"
cat "$OUT/summary.txt"

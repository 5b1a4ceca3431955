#!/usr/bin/env bash
# FeatureNorm on OpenOOD v1.5's CIFAR-10 benchmark with OpenOOD's three released ResNet-18
# checkpoints: for each, select the block with NormRatio and evaluate every method on OpenOOD's
# image lists; then compare near/far AUROC (mean ± std over the three) with the leaderboard.
#
#   scripts/reproduce_openood.sh [DEST] [--dry-run]
#
# DEST (default ./data) is the folder of scripts/download_data.sh: OpenOOD's data is read from
# DEST/openood (openood_root) and the checkpoints from
# DEST/openood/results/cifar10_resnet18_32x32_base_e100_lr0.1_default/s{0,1,2}/best.ckpt.
# Runs are saved in runs/openood_cifar10/s{0,1,2}. Config: conf/openood_cifar10.json (OpenOOD's
# CIFAR-10 normalization).
set -euo pipefail

SEEDS=(0 1 2)
CKPT_DIR=cifar10_resnet18_32x32_base_e100_lr0.1_default
IMAGE_SETS=(cifar10 cifar100 tin mnist svhn texture places365)

usage() {
  cat <<'USAGE'
usage: scripts/reproduce_openood.sh [DEST] [--dry-run]

Runs select_block.py and eval_ood.py --benchmark openood_v1.5 --methods all for OpenOOD's
checkpoints s0, s1, s2, then scripts/compare_openood.py over the three results.
  DEST        data folder of scripts/download_data.sh (default ./data); OpenOOD's layout in DEST/openood
  --dry-run   print the commands without running them (and without checking the data)
  -h, --help  this message
USAGE
}

DRY_RUN=0
POSITIONAL=()
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    -*) echo "error: unknown option '$arg'; see --help" >&2; exit 2 ;;
    *) POSITIONAL+=("$arg") ;;
  esac
done
if [ ${#POSITIONAL[@]} -gt 1 ]; then
  echo "error: expected at most one DEST, got ${#POSITIONAL[@]} arguments; see --help" >&2
  exit 2
fi
DEST="${POSITIONAL[0]:-./data}"
DEST="${DEST%/}"

# Paths below are relative to the repository root (DEST too, when it is relative).
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
CONF=conf/openood_cifar10.json
ROOT="$DEST/openood"
RUN=runs/openood_cifar10

if [ "$DRY_RUN" = 0 ]; then
  missing=()
  [ -f "$ROOT/benchmark_imglist/cifar10/test_cifar10.txt" ] || missing+=("$ROOT/benchmark_imglist/")
  for name in "${IMAGE_SETS[@]}"; do
    [ -d "$ROOT/images_classic/$name" ] || missing+=("$ROOT/images_classic/$name/")
  done
  for seed in "${SEEDS[@]}"; do
    [ -f "$ROOT/results/$CKPT_DIR/s$seed/best.ckpt" ] || missing+=("$ROOT/results/$CKPT_DIR/s$seed/best.ckpt")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    # download_data.sh fetches nothing from Google Drive: it checks the layout and says what to
    # download and where to put it (it fetches only from FEATURENORM_DATA_MIRROR when that is set)
    {
      echo "error: OpenOOD's data is incomplete under $ROOT; missing: ${missing[*]}"
      bash scripts/download_data.sh "$DEST" --only openood
    } >&2 || true
    exit 1
  fi
fi

COMMANDS=()
RESULTS=()
for seed in "${SEEDS[@]}"; do
  ckpt="$ROOT/results/$CKPT_DIR/s$seed/best.ckpt"
  common="--config $CONF --checkpoint $ckpt --set openood_root=$ROOT --set save_path=$RUN/s$seed"
  COMMANDS+=("$PY select_block.py $common")
  COMMANDS+=("$PY eval_ood.py $common --benchmark openood_v1.5 --methods all")
  RESULTS+=("$RUN/s$seed/ood_results.json")
done
COMMANDS+=("$PY scripts/compare_openood.py ${RESULTS[*]}")

for cmd in "${COMMANDS[@]}"; do
  echo "+ $cmd"
  if [ "$DRY_RUN" = 0 ]; then
    # Word splitting is intended: the paths above contain no spaces by construction.
    $cmd
  fi
done

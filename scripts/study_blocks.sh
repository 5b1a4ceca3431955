#!/usr/bin/env bash
# The block-selection study: train the held-out models (other architectures, widths and data than
# the MNIST-family reproduction's ResNet-18s), select on each with every pseudo-OOD kind, score
# FeatureNorm at every block on real OOD images, then tabulate which evidence predicts the best block.
#
#   scripts/study_blocks.sh [--dry-run] [--data DIR]
#
# Development models: the six runs of scripts/reproduce_mnist_family.sh (run it first).
# Held-out models: the MODELS below, trained here into runs/block_study/. A finished stage is skipped.
# Writes results/block_study/ (study.md, study.json, evidence.png, gaps.png) with scripts/study_blocks.py.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY_RUN=0
DATA=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --data) DATA="${2:?--data needs a folder}"; shift ;;
    *) echo "error: unknown argument '$1'; see --help" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$DATA" ]; then
  if [ -d ../shared/data/mnist ]; then DATA=../shared/data; else DATA=./data; fi
fi
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
RUNS=runs/block_study
DEV=runs/mnist_family

# name | config | overrides (space-separated key=value)
MODELS=(
  "fashion_mnist_resnet18_w0.0625|fashion_mnist|width=0.0625 epochs=5"
  "fashion_mnist_vgg11_w0.25|fashion_mnist|arch=vgg11 width=0.25 image_size=32 epochs=5 compile=false"
  "fashion_mnist_wrn28_w0.1|fashion_mnist|arch=wrn28_10 width=0.1 epochs=3"
  "mnist_resnet18_w0.0625|mnist|width=0.0625 epochs=2"
  "mnist_vgg11_w0.25|mnist|arch=vgg11 width=0.25 image_size=32 epochs=2 compile=false"
  "mnist_wrn28_w0.1|mnist|arch=wrn28_10 width=0.1 epochs=2"
  "digits_resnet18_w0.25|digits|"
  "digits_vgg11_w0.25|digits|arch=vgg11 width=0.25 epochs=30 milestones=[15,25]"
)

run() {
  echo "+ $*"
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

[ "$DRY_RUN" = 1 ] || mkdir -p "$RUNS"
run "$PY" scripts/make_synthetic_ood.py "$RUNS/ood28" --image-size 28 --count 1000
run "$PY" scripts/make_synthetic_ood.py "$RUNS/ood32" --image-size 32 --count 1000
for entry in "${MODELS[@]}"; do
  IFS='|' read -r name conf overrides <<< "$entry"
  RUN="$RUNS/$name"
  SETS=(--config "conf/$conf.json" --set "save_path=$RUN" --no-progress)
  for kv in $overrides; do SETS+=(--set "$kv"); done
  size=28
  case " $overrides " in *" image_size=32 "*) size=32 ;; esac
  case "$conf" in
    fashion_mnist) SETS+=(--set "id_dataset=$DATA/fashion-mnist" --set "mnist=$DATA/mnist") ;;
    mnist) SETS+=(--set "id_dataset=$DATA/mnist" --set "fashion_mnist=$DATA/fashion-mnist") ;;
    digits) size=32 ;;
  esac
  OOD=()
  for set in photos letters gaussian_noise uniform_noise; do OOD+=(--ood "$set=$RUNS/ood$size/$set"); done
  if [ ! -f "$RUN/.trained" ]; then
    run "$PY" train.py "${SETS[@]}" --overwrite
    [ "$DRY_RUN" = 1 ] || touch "$RUN/.trained"
  fi
  [ -f "$RUN/block_selection.json" ] || run "$PY" select_block.py "${SETS[@]}"
  [ -f "$RUN/ood_results.json" ] || run "$PY" eval_ood.py "${SETS[@]}" --methods featurenorm,norm_profile --all-blocks "${OOD[@]}"
done
run "$PY" scripts/study_blocks.py --dev "$DEV"/*_seed* --held-out $(for e in "${MODELS[@]}"; do echo "$RUNS/${e%%|*}"; done) \
  --out results/block_study --without gaussian_noise,uniform_noise

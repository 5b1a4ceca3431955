#!/usr/bin/env bash
# featurenorm on real images: Fashion-MNIST vs MNIST and MNIST vs Fashion-MNIST, 3 seeds each.
# For every (direction, seed): train.py, select_block.py, eval_ood.py --methods all --all-blocks
# (the other data set's test split, plus four sets made from what installed packages ship); then
# scripts/summarize_mnist_family.py writes the README's tables and plots to results/mnist_family/.
#
#   scripts/reproduce_mnist_family.sh [--dry-run] [--data DIR] [--seeds "0 1 2"] [--runs DIR] [--results DIR]
#
# DIR holds mnist/ and fashion-mnist/ with the four IDX files each (gzipped or not); by default
# ../shared/data when it exists, else ./data. A stage whose output is already there is skipped,
# so a rerun continues where the last one stopped.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/reproduce_mnist_family.sh [--dry-run] [--data DIR] [--seeds "0 1 2"] [--runs DIR] [--results DIR]

  --data DIR   folder with mnist/ and fashion-mnist/ (default: ../shared/data if present, else ./data)
  --seeds S    the seeds, space-separated (default "0 1 2")
  --runs DIR   where the runs go (default runs/mnist_family)
  --results DIR  where the summary goes (default results/mnist_family; results/<name of --runs> otherwise)
  --dry-run    print the commands without running them
  -h, --help   this message
USAGE
}

cd "$(dirname "$0")/.."
DRY_RUN=0
DATA=""
SEEDS="0 1 2"
RUNS=runs/mnist_family
RESULTS=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --data) DATA="${2:?--data needs a folder}"; shift ;;
    --seeds) SEEDS="${2:?--seeds needs a list}"; shift ;;
    --runs) RUNS="${2:?--runs needs a folder}"; shift ;;
    --results) RESULTS="${2:?--results needs a folder}"; shift ;;
    *) echo "error: unknown argument '$1'; see --help" >&2; exit 2 ;;
  esac
  shift
done
RESULTS=${RESULTS:-results/$(basename "$RUNS")}
if [ -z "$DATA" ]; then
  if [ -d ../shared/data/mnist ]; then DATA=../shared/data; else DATA=./data; fi
fi
if [ "$DRY_RUN" = 0 ]; then
  for set in mnist fashion-mnist; do
    if [ ! -d "$DATA/$set" ]; then
      echo "error: $DATA/$set not found; pass --data DIR with mnist/ and fashion-mnist/ (the IDX files)," \
           "or set download: true in conf/mnist.json and conf/fashion_mnist.json" >&2
      exit 2
    fi
  done
fi
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi

run() {  # print, then run unless --dry-run; record the wall time of each stage
  echo "+ $*"
  if [ "$DRY_RUN" = 0 ]; then
    local start=$SECONDS
    "$@"
    printf '%s\t%s\t%d\n' "$STAGE" "$RUN" $((SECONDS - start)) >> "$RUNS/timing.tsv"
  fi
}

[ "$DRY_RUN" = 1 ] || mkdir -p "$RUNS"
EXTRA="$RUNS/extra_ood"
STAGE=extra_ood RUN=- run "$PY" scripts/make_synthetic_ood.py "$EXTRA" --image-size 28 --count 1000
OOD_ARGS=()
for name in photos letters gaussian_noise uniform_noise; do OOD_ARGS+=(--ood "$name=$EXTRA/$name"); done

for seed in $SEEDS; do
  for id in fashion_mnist mnist; do
    RUN="$RUNS/${id}_seed${seed}"
    SETS=(--config "conf/$id.json" --set "save_path=$RUN" --set "seed=$seed" --no-progress
          --set "id_dataset=$DATA/$( [ $id = mnist ] && echo mnist || echo fashion-mnist )"
          --set "$( [ $id = mnist ] && echo fashion_mnist=$DATA/fashion-mnist || echo mnist=$DATA/mnist )")
    if [ ! -f "$RUN/.trained" ]; then
      STAGE=train run "$PY" train.py "${SETS[@]}" --overwrite
      [ "$DRY_RUN" = 1 ] || touch "$RUN/.trained"
    fi
    [ -f "$RUN/block_selection.json" ] || STAGE=select run "$PY" select_block.py "${SETS[@]}"
    [ -f "$RUN/ood_results.json" ] || STAGE=eval run "$PY" eval_ood.py "${SETS[@]}" --methods all --all-blocks \
      "${OOD_ARGS[@]}"
  done
done
STAGE=summary RUN=- run "$PY" scripts/summarize_mnist_family.py "$RUNS" --out "$RESULTS"

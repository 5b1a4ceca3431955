#!/usr/bin/env bash
# The paper's ImageNet setting with a pretrained torchvision model (no training): select the block
# with NormRatio, evaluate every method on iNaturalist, SUN, Places and Textures (and FeatureNorm at
# every block), and put our selected block beside the paper's.
#
#   scripts/reproduce_imagenet.sh ARCH [--dry-run]
#
# ARCH is resnet50, vgg16 or mobilenet_v3_large (config conf/imagenet_ARCH.json, torchvision's
# IMAGENET1K_V1 weights, fetched into the torch hub cache when missing); the run is saved in
# runs/imagenet_ARCH. The data layout is in the README, section "ImageNet".
set -euo pipefail

ARCHS=(resnet50 vgg16 mobilenet_v3_large)

usage() {
  cat <<'USAGE'
usage: scripts/reproduce_imagenet.sh ARCH [--dry-run]

Runs select_block.py, eval_ood.py --methods all --all-blocks and scripts/compare_paper.py
for the paper's ImageNet setting, with torchvision's pretrained weights (downloaded into
the torch hub cache if they are not there yet).
  ARCH        resnet50, vgg16 or mobilenet_v3_large (config conf/imagenet_ARCH.json)
  --dry-run   print the commands without running them
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
if [ ${#POSITIONAL[@]} -ne 1 ]; then
  echo "error: expected ARCH, got ${#POSITIONAL[@]} argument(s); ARCH is one of: ${ARCHS[*]}" >&2
  exit 2
fi
ARCH="${POSITIONAL[0]}"
case " ${ARCHS[*]} " in
  *" $ARCH "*) ;;
  *) echo "error: unknown arch '$ARCH'; the paper's ImageNet archs are: ${ARCHS[*]}" >&2; exit 2 ;;
esac

# Paths below are relative to the repository root.
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
CONF="conf/imagenet_${ARCH}.json"
RUN="runs/imagenet_${ARCH}"

if [ "$DRY_RUN" = 0 ] && [ ! -f "$CONF" ]; then
  echo "error: config $CONF not found; run from a complete checkout" >&2
  exit 2
fi

# download=true: running this script is the request to fetch the pretrained weights when they are missing.
COMMANDS=(
  "$PY select_block.py --config $CONF --set save_path=$RUN --set download=true"
  "$PY eval_ood.py --config $CONF --set save_path=$RUN --set download=true --methods all --all-blocks"
  "$PY scripts/compare_paper.py $RUN/ood_results.json"
)

for cmd in "${COMMANDS[@]}"; do
  echo "+ $cmd"
  if [ "$DRY_RUN" = 0 ]; then
    # Word splitting is intended: the paths above contain no spaces by construction.
    $cmd
  fi
done

#!/usr/bin/env bash
# Reproduce one column of the paper's CIFAR-10 table: train, select the block with NormRatio,
# evaluate every method on every OOD set (and FeatureNorm at every block), compare with the paper.
#
#   scripts/reproduce_cifar10.sh ARCH [SEED] [--dry-run]
#
# ARCH is resnet18, wrn28_10 or vgg11 (config conf/cifar10_ARCH.json); SEED defaults to 0; the run
# is saved in runs/cifar10_ARCH_seedSEED. Run scripts/download_data.sh first.
set -euo pipefail

ARCHS=(resnet18 wrn28_10 vgg11)

usage() {
  cat <<'EOF'
usage: scripts/reproduce_cifar10.sh ARCH [SEED] [--dry-run]

Runs train.py, select_block.py, eval_ood.py --methods all --all-blocks and
scripts/compare_paper.py for the paper's CIFAR-10 setting.
  ARCH        resnet18, wrn28_10 or vgg11 (config conf/cifar10_ARCH.json)
  SEED        random seed (default 0); the run goes to runs/cifar10_ARCH_seedSEED
  --dry-run   print the commands without running them
  -h, --help  this message
EOF
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
if [ ${#POSITIONAL[@]} -lt 1 ] || [ ${#POSITIONAL[@]} -gt 2 ]; then
  echo "error: expected ARCH [SEED], got ${#POSITIONAL[@]} argument(s); ARCH is one of: ${ARCHS[*]}" >&2
  exit 2
fi
ARCH="${POSITIONAL[0]}"
SEED="${POSITIONAL[1]:-0}"
case " ${ARCHS[*]} " in
  *" $ARCH "*) ;;
  *) echo "error: unknown arch '$ARCH'; the paper's CIFAR-10 archs are: ${ARCHS[*]}" >&2; exit 2 ;;
esac
if ! [[ "$SEED" =~ ^[0-9]+$ ]]; then
  echo "error: SEED must be a non-negative integer, got '$SEED'" >&2
  exit 2
fi

# Paths below are relative to the repository root.
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
CONF="conf/cifar10_${ARCH}.json"
RUN="runs/cifar10_${ARCH}_seed${SEED}"

if [ "$DRY_RUN" = 0 ] && [ ! -f "$CONF" ]; then
  echo "error: config $CONF not found; run from a complete checkout" >&2
  exit 2
fi

COMMANDS=(
  "$PY train.py --config $CONF --set seed=$SEED --set save_path=$RUN"
  "$PY select_block.py --config $CONF --set save_path=$RUN --set seed=$SEED"
  "$PY eval_ood.py --config $CONF --set save_path=$RUN --methods all --all-blocks"
  "$PY scripts/compare_paper.py $RUN/ood_results.json"
)

for cmd in "${COMMANDS[@]}"; do
  echo "+ $cmd"
  if [ "$DRY_RUN" = 0 ]; then
    # Word splitting is intended: the paths above contain no spaces by construction.
    $cmd
  fi
done

"""Compare two quick-start folders' block_selection.json and ood_results.json: every figure equal, paths aside.

    python scripts/compare_runs.py OLD_RUN_DIR NEW_RUN_DIR

Exits 1 and lists every difference when they differ. Keys whose values are paths or times (``checkpoint``)
are left out; key order is ignored (the values are compared, as JSON readers see them).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

IGNORED = {"checkpoint"}


def differences(old, new, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = [f"{where}/{k}: only in the {'old' if k in old else 'new'} file"
                 for k in sorted(set(old) ^ set(new)) if k not in IGNORED]
        for key in old.keys() & new.keys() - IGNORED:
            found += differences(old[key], new[key], f"{where}/{key}")
        return found
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{where}: {len(old)} items, now {len(new)}"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{where}[{i}]")]
    same = old == new or (isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new))
    return [] if same else [f"{where}: {old!r} -> {new!r}"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args(argv)
    failed = False
    for name in ("block_selection.json", "ood_results.json"):
        found = differences(json.loads((args.old / name).read_text()), json.loads((args.new / name).read_text()))
        print(f"{name}: {'identical figures' if not found else f'{len(found)} differences'}")
        for line in found[:40]:
            print(f"  {line}")
        failed |= bool(found)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

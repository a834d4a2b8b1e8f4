"""Train the paper's four variants of one size in turn, resuming any that were interrupted, then write
the table (scripts/report.py).

    python scripts/reproduce.py small [--out logs/reproduce] [any train.py override ...]
Each variant runs `train.py experiment=<size>_<variant> hydra.run.dir=<out>/<size>/<variant>
resume=true`, so running the same command again continues unfinished runs and skips finished ones.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("vd", "al", "re", "real")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("size", choices=("small", "medium", "large"))
    parser.add_argument("--out", default="logs/reproduce")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="a comma-separated subset of vd,al,re,real")
    args, overrides = parser.parse_known_args()
    root = Path(args.out) / args.size
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            sys.exit(f"error: unknown variant {variant!r}; choose from {', '.join(VARIANTS)}.")
        run_dir = root / variant
        if (run_dir / "metrics.json").is_file():
            print(f"{variant}: finished earlier ({run_dir}/metrics.json)")
            continue
        command = [sys.executable, str(REPO / "scripts" / "train.py"), f"experiment={args.size}_{variant}",
                   f"hydra.run.dir={run_dir}", "resume=true", *overrides]
        print(" ".join(command[1:]), flush=True)
        result = subprocess.run(command)
        if result.returncode != 0:
            sys.exit(f"{variant} stopped with status {result.returncode}; run the same command again to resume it.")
    subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(root), "--out", str(root / "report")],
                   check=True)


if __name__ == "__main__":
    main()

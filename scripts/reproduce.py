"""Train the paper's four variants of one size, both training runs for small, then write the table.

    python scripts/reproduce.py small [--out logs/reproduce] [--variants vd,real] [--seeds 1234,2] [train.py overrides]

Stage 1 of each variant runs `train.py experiment=<size>_<variant> hydra.run.dir=<out>/<size>/<variant>/stage1
resume=true`. The paper trained its small models twice (its footnote 4), the second run starting from the
final weights of the first with a fresh optimizer and learning-rate schedule, so for small stage 2 runs the
same preset with `init_from=<stage 1>/checkpoints/last.ckpt` in `<variant>/stage2`. Running the same
command again continues unfinished runs and skips finished ones. With ``--seeds``, each seed's runs go to
`<variant>/seed<N>/stage<k>`. The table (scripts/report.py) lists both stages, and the spread of the seeds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from lm.cli import report_user_errors, seeds
from lm.errors import UserError

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("vd", "al", "re", "real")
STAGES = {"small": 2, "medium": 1, "large": 1}  # the paper's second training run is for the small models


def _train(variant_dir: Path, stage: int, preset: str, overrides: list[str]) -> None:
    run_dir = variant_dir / f"stage{stage}"
    if (run_dir / "metrics.json").is_file():
        print(f"{preset} stage {stage}: finished earlier ({run_dir}/metrics.json)")
        return
    command = [sys.executable, str(REPO / "scripts" / "train.py"), f"experiment={preset}", f"hydra.run.dir={run_dir}",
               "resume=true", *overrides]
    if stage == 2:
        command.append(f"init_from={variant_dir / 'stage1' / 'checkpoints' / 'last.ckpt'}")
    print(" ".join(command[1:]), flush=True)
    result = subprocess.run(command)
    if result.returncode != 0:
        raise UserError(f"{preset} stage {stage} in {variant_dir} stopped with status {result.returncode}; "
                        "run the same command again to resume it.")


@report_user_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("size", choices=tuple(STAGES))
    parser.add_argument("--out", default="logs/reproduce")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="a comma-separated subset of vd,al,re,real")
    parser.add_argument("--stages", type=int, choices=(1, 2), help="1: first training run only "
                        "(default: 2 for small, as the paper, 1 for medium and large)")
    parser.add_argument("--seeds", type=seeds, help="comma-separated seeds, such as 1234,2, each in "
                        "<variant>/seed<N>/ (default: the config's seed, in <variant>/)")
    args, overrides = parser.parse_known_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    root = Path(args.out) / args.size
    for seed in args.seeds or [None]:
        for variant in variants:
            variant_dir = root / variant if seed is None else root / variant / f"seed{seed}"
            seeded = overrides if seed is None else [*overrides, f"seed={seed}"]
            for stage in range(1, (args.stages or STAGES[args.size]) + 1):
                _train(variant_dir, stage, f"{args.size}_{variant}", seeded)
    subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(root), "--out", str(root / "report")],
                   check=True)


if __name__ == "__main__":
    main()

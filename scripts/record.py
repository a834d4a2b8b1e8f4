"""Copy a run's compact record into the repository, so that its numbers outlive the machine that ran it.

    python scripts/record.py logs/runs/<run> results/<set>/<name>

Writes metrics.json (when the run has finished), csv/metrics.csv, .hydra/config.yaml and
.hydra/overrides.yaml as the run wrote them, .hydra/hydra.yaml cut to the config-group choices
(report.py reads the variant from them; the rest names the machine's folders), and command.txt:
the command that trains the run again, with its folder as <run> (after --env; --ran adds a line on how it
ran: commit, threads, alone or beside another run). Never checkpoints. An unfinished
run is recorded as far as it got; report.py shows it as unfinished.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import OmegaConf

from lm.cli import report_user_errors
from lm.errors import DataError


@report_user_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder written by train.py")
    parser.add_argument("dest", type=Path, help="where the record goes, e.g. results/paper_small/real_stage1")
    parser.add_argument("--env", default="", help='what preceded the command, e.g. "PTB_DIR=<ptb folder> OMP_NUM_THREADS=1"')
    parser.add_argument("--ran", default="", help='how it ran, a second line of command.txt, e.g. "commit 2454ae2, '
                        'alone with 2 threads"')
    args = parser.parse_args()
    hydra_yaml = args.run / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file() or not (args.run / "csv" / "metrics.csv").is_file():
        raise DataError(f"{args.run} is not a run folder written by train.py (no .hydra/hydra.yaml or csv/metrics.csv).")
    hydra = OmegaConf.load(hydra_yaml).hydra
    # Folders of this machine become placeholders: <run> for the run, <stage 1 run> for an init_from source.
    places = {str(args.run.resolve()): "<run>", str(args.run): "<run>"}
    source = next((o.partition("=")[2] for o in hydra.overrides.task if o.startswith("init_from=")), None)
    if source:
        places[str(Path(source).parent.parent)] = "<stage 1 run>"

    def portable(text: str) -> str:
        for place, name in sorted(places.items(), key=lambda item: -len(item[0])):
            text = text.replace(place, name)
        return text

    (args.dest / ".hydra").mkdir(parents=True, exist_ok=True)
    (args.dest / "csv").mkdir(exist_ok=True)
    for name in ("metrics.json", "csv/metrics.csv", ".hydra/config.yaml", ".hydra/overrides.yaml"):
        if (args.run / name).is_file():
            (args.dest / name).write_text(portable((args.run / name).read_text()))
    choices = OmegaConf.create({"hydra": {"runtime": {"choices": OmegaConf.to_container(hydra.runtime.choices)}}})
    OmegaConf.save(choices, args.dest / ".hydra" / "hydra.yaml")
    hydra_overrides = [o for o in hydra.overrides.hydra if not o.startswith(("hydra.run.dir=", "hydra.mode="))]
    command = ["python scripts/train.py", *hydra.overrides.task, *hydra_overrides, "hydra.run.dir=<run>"]
    ran = f"# ran: {args.ran}\n" if args.ran else ""
    (args.dest / "command.txt").write_text(portable(" ".join([args.env, *command] if args.env else command)) + "\n" + ran)
    print(f"recorded {args.run} in {args.dest}")


if __name__ == "__main__":
    main()

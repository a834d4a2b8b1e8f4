"""The paper's table from any set of run or multirun folders, next to the paper's numbers, plus plots.
Runs still training, or stopped to be resumed, appear with the epochs they have validated.

    python scripts/report.py logs/reproduce/small [logs/multiruns/...] --out reports/small
    python scripts/report.py --sync README.md docs/results.md   # regenerate the tables of committed records
writes <out>/table.md (below it the mean, range and seeds of runs with the same settings apart from the seed),
<out>/val_curves.png and, for runs that differ in alpha, <out>/alpha.png (the PNGs need matplotlib:
pip install -e ".[report]"). For each hyper-parameter study among them (`-m hparams_search=...`):
<out>/study_<folder>.md with its trials and a .png of the objective against every searched value.

--sync rewrites, in the given documents, every table between `<!-- report: PATHS -->` and
`<!-- /report -->` from the records under PATHS (results/...), so a committed table is always what
those records give; a test checks it. Between `<!-- figure: PNG PATHS -->` and `<!-- /figure -->` it
draws the validation curves of those records into PNG (matplotlib), writes their data beside it as
CSV, and links the image; a test checks the CSV against the records.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lm.cli import report_user_errors
from lm.errors import DataError
from lm.report import find_runs, plot_alpha_sweep, plot_val_curves, render_figure_blocks, render_report_blocks, report_tables
from lm.study import find_studies, plot_study, study_table


@report_user_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="run folders, multirun folders, or folders holding them")
    parser.add_argument("--out", default="reports", help="folder for table.md and the plots")
    parser.add_argument("--sync", nargs="+", type=Path, metavar="DOC", help="regenerate the report blocks of these documents")
    args = parser.parse_args()
    if args.sync:
        for doc in args.sync:
            text = doc.read_text()
            updated = render_figure_blocks(render_report_blocks(text), doc)
            doc.write_text(updated)
            print(f"{doc}: {'updated' if updated != text else 'already up to date'}")
        return
    if not args.paths:
        parser.error("give run folders to report on, or --sync DOC ...")
    runs = find_runs(args.paths)
    if not runs:
        raise DataError(f"no run folders below {', '.join(args.paths)} (none has metrics.json, or a .hydra config "
                        "and a validation in csv/metrics.csv); point at folders written by train.py.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = report_tables(runs)
    (out / "table.md").write_text(table)
    print(table)
    studies = find_studies(runs)
    for study in studies:
        (out / f"study_{study.path.name}.md").write_text(study_table(study))
        print(study_table(study))
    try:
        written = [plot_val_curves(runs, out / "val_curves.png"), plot_alpha_sweep(runs, out / "alpha.png")]
        written += [plot_study(study, out / f"study_{study.path.name}.png") for study in studies]
    except ImportError:
        print('no plots: matplotlib is not installed (pip install -e ".[report]")', file=sys.stderr)
        return
    for path in filter(None, written):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

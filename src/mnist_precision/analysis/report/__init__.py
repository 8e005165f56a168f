"""The comparison report: every precision against fp32, across seeds, from the MLflow runs.

    mnist-precision report            # or: python -m mnist_precision.analysis.report

Reads the finished runs of the experiment (`comparison`), writes
reports/precision.md (`markdown`) with PNG figures beside it (`figures`),
prints the verdict tables, nests each variant's seed runs under a parent run
that carries its verdict (`parents`), sets the Model Registry's aliases of
each variant and of the recommended one (`aliases`), and logs the report to MLflow as a run
tagged as a summary, in its own experiment `<experiment>-reports`, so that it
never mixes with training runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlflow import MlflowClient

from mnist_precision.analysis.report.aliases import set_aliases
from mnist_precision.analysis.report.markdown import verdict_table, write_report
from mnist_precision.analysis.report.parents import update_parents
from mnist_precision.base.params import experiment_name
from mnist_precision.tracking.lifecycle import log_side_run
from mnist_precision.tracking.run_types import RUN_TYPE_TAG, SUMMARY
from mnist_precision.tracking.store import existing_experiment_id
from mnist_precision.tracking.view import save_view


def log_summary(experiment: str, report: Path, figures: list[Path]) -> str:
    tags = {RUN_TYPE_TAG: SUMMARY, "report.source_experiment": experiment}
    return log_side_run(experiment, "reports", "report", tags, [report, *figures])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mnist-precision report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", help="the MLflow experiment (default: mlflow.experiment of params.yaml)")
    parser.add_argument("--out", type=Path, default=Path("reports/precision.md"), help="the Markdown report to write")
    args = parser.parse_args(argv)
    experiment = experiment_name(args.experiment)
    markdown, figures, groups = write_report(experiment, args.out)
    for index, group in enumerate(groups, start=1):
        print(f"Group {index}: {group.title()}")
        print(verdict_table(group))
    client = MlflowClient()
    experiment_id = existing_experiment_id(experiment)
    parents = update_parents(client, experiment_id, groups)
    save_view(client, experiment_id)
    print(
        f"MLflow: {parents} variant parent run(s) in experiment '{experiment}', each over its seed runs, "
        "with its verdict as metrics (`mnist-precision ui` opens the runs table)."
    )
    aliases = set_aliases(client, experiment, groups)
    if aliases:
        print(f"MLflow Model Registry: registered model '{experiment}', aliases {', '.join(aliases)}.")
    run_id = log_summary(experiment, args.out, figures)
    print(
        f"Wrote {args.out} and {len(figures)} figures; logged as summary run {run_id} "
        f"in MLflow experiment '{experiment}-reports'."
    )

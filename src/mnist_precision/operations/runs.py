"""Runs left RUNNING by a process that cannot end them.

    mnist-precision runs --stale                 # list them
    mnist-precision runs --mark-killed RUN_ID... # end them as KILLED

A hard crash (SIGKILL, the OOM killer, a reboot, a preempted machine) leaves
its MLflow run RUNNING. The train stage ends those of this host by itself when
it starts; runs from other hosts it cannot check, so they are listed here, and
ended only on request.
"""

from __future__ import annotations

import argparse
import time

from mlflow import MlflowClient

from mnist_precision.base import names
from mnist_precision.base.errors import UserError
from mnist_precision.base.params import experiment_name
from mnist_precision.tracking.liveness import mark_killed, process_state
from mnist_precision.tracking.run_types import is_training_run
from mnist_precision.tracking.store import configure


class RunsError(UserError):
    """A run that cannot be marked killed."""


STATES = {"dead": "its process is gone", "unknown": "another host, or not recorded: cannot check"}


def stale(client: MlflowClient, experiment_id: str) -> list:
    """The RUNNING runs whose process is not alive on this host."""
    return [
        run
        for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'")
        if is_training_run(run.data.tags) and process_state(run.data.tags) != "alive"
    ]


def describe(run) -> str:
    tags = run.data.tags
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.info.start_time / 1000))
    return (
        f"{run.info.run_id}  {run.info.run_name}  started {started}  host {tags.get(names.HOST, '?')}  "
        f"pid {tags.get(names.PID, '?')}  ({STATES[process_state(tags)]})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mnist-precision runs", description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--stale", action="store_true", help="list the runs left RUNNING by a process that is gone")
    action.add_argument("--mark-killed", nargs="+", metavar="RUN_ID", help="end these RUNNING runs as KILLED")
    parser.add_argument("--experiment", help="the MLflow experiment (default: mlflow.experiment of params.yaml)")
    args = parser.parse_args(argv)
    store = configure()
    client = MlflowClient()
    if args.stale:
        name = experiment_name(args.experiment)
        experiment = client.get_experiment_by_name(name)
        runs = stale(client, experiment.experiment_id) if experiment else []
        print(
            f"{len(runs)} run(s) of experiment {name!r} in {store.uri.split('?')[0]} left RUNNING "
            "by a process that is not alive here" + (":" if runs else ".")
        )
        for run in runs:
            print("  " + describe(run))
        return
    for run_id in args.mark_killed:
        try:
            run = client.get_run(run_id)
        except Exception:
            raise RunsError(f"no run {run_id} in {store.uri.split('?')[0]}: copy the id from --stale") from None
        if run.info.status != "RUNNING":
            raise RunsError(f"run {run_id} is {run.info.status}, not RUNNING: nothing to end")
        if process_state(run.data.tags) == "alive":
            raise RunsError(
                f"run {run_id} is still running here as pid {run.data.tags[names.PID]}: stop that "
                "process instead (SIGTERM checkpoints it and ends the run KILLED)"
            )
        mark_killed(
            client,
            run_id,
            f"marked killed on request (mnist-precision runs --mark-killed): {STATES[process_state(run.data.tags)]}",
        )
        print(f"{run_id}: KILLED")

"""Whether the process of a RUNNING run is alive: a hard crash (SIGKILL, the
OOM killer, a reboot) leaves its run RUNNING, and only its host can tell."""

from __future__ import annotations

import socket

import psutil
from mlflow import MlflowClient
from mlflow.entities import RunStatus

from mnist_precision.base import names
from mnist_precision.tracking.run_types import is_training_run


def process_tags() -> dict[str, str]:
    """Where this process runs: a run it leaves RUNNING (SIGKILL, the OOM
    killer, a reboot) can then be told stale by a later stage on this host."""
    me = psutil.Process()
    return {names.HOST: socket.gethostname(), names.PID: str(me.pid), names.PROCESS_START: f"{me.create_time():.2f}"}


def process_state(tags: dict[str, str]) -> str:
    """`alive` or `dead` for a run's process on this host (the same pid with the
    same start time, or not); `unknown` on another host, or where not recorded."""
    if tags.get(names.HOST) != socket.gethostname() or names.PID not in tags or names.PROCESS_START not in tags:
        return "unknown"
    try:
        started = psutil.Process(int(tags[names.PID])).create_time()
    except psutil.NoSuchProcess:
        return "dead"
    return "alive" if abs(started - float(tags[names.PROCESS_START])) < 0.05 else "dead"  # a reused pid is not it


def mark_killed(client: MlflowClient, run_id: str, reason: str) -> None:
    client.set_tag(run_id, names.KILLED_REASON, reason)
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))


def end_stale_runs(experiment_id: str, keep: str | None) -> list[str]:
    """Mark KILLED the runs of the experiment left RUNNING by a process of this
    host that no longer exists, except `keep` (the run a checkpoint continues)."""
    client = MlflowClient()
    ended = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if run.info.run_id != keep and is_training_run(tags) and process_state(tags) == "dead":
            mark_killed(
                client,
                run.info.run_id,
                f"its process (pid {tags[names.PID]} on {tags[names.HOST]}) ended without "
                f"ending the run: a hard crash (SIGKILL, out of memory, reboot)",
            )
            ended.append(run.info.run_id)
    return ended

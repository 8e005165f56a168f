"""Many experiments through the local queue, two at a time, on the SQLite store:
nothing lost, even when one of them is SIGKILLed midway and run again.

One sweep proves both: the eleven that were not killed are the many experiments
on two workers; the twelfth, queued again, shows what a user does after a kill."""

from __future__ import annotations

import collections
import signal
import time

import psutil
import pytest

from helpers import Project, make_project, running_queue, wait_for_queue

pytestmark = pytest.mark.slow

PRECISIONS = ("fp32", "fp16", "bf16")
SEEDS = (0, 1, 2, 3)
EPOCH_METRICS = ("train_loss", "train_accuracy", "epoch_seconds", "epoch_skipped_steps", "lost_updates")


@pytest.fixture
def project(tmp_path, mnist_mirror) -> Project:
    return make_project(tmp_path, mnist_mirror)


def queue_sweep(project: Project) -> None:
    project.run("dvc", "exp", "run", "--queue", "-S", f"precision={','.join(PRECISIONS)}",
                "-S", f"seed={','.join(map(str, SEEDS))}")


def assert_whole(client, run) -> None:
    assert run.info.status == "FINISHED"
    for key in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1], key
    assert run.data.metrics["test_accuracy"] >= 0.85
    # 2 cores shared by the experiments running when it started (1 or 2 of them)
    assert run.data.params["threads"] in ("1", "2") and "cores shared by" in run.data.params["threads_from"]


def assert_sweep_whole(project: Project) -> list:
    """Every (precision, seed) has one FINISHED run with every epoch metric; the report counts them."""
    client, _, runs = project.mlflow_runs()
    finished = [run for run in runs if run.info.status == "FINISHED"]
    assert sorted((r.data.params["precision"], int(r.data.params["seed"])) for r in finished) == \
        sorted((p, s) for p in PRECISIONS for s in SEEDS)
    for run in finished:
        assert_whole(client, run)
    project.run("mnist-precision", "report")
    assert f"from {len(finished)} finished runs" in (project.root / "reports" / "precision.md").read_text()
    return runs


def kill_a_training_midway(project: Project, timeout: float = 600) -> str:
    """SIGKILL the training process of a queued experiment a few seconds into its
    epoch, as the OOM killer would; the id of the MLflow run it leaves RUNNING."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, _, runs = project.mlflow_runs()
        except Exception:  # the store or its experiment is still being created
            runs = []
        for run in runs:
            midway = "train_loss" not in run.data.metrics and time.time() - run.info.start_time / 1000 > 3
            if run.info.status == "RUNNING" and "pid" in run.data.tags and midway:
                try:
                    training = psutil.Process(int(run.data.tags["pid"]))
                    assert "stages/train.py" in " ".join(training.cmdline())
                    training.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:  # it finished meanwhile: take another
                    continue
                return run.info.run_id
        time.sleep(0.5)
    pytest.fail("no experiment was training")


def test_twelve_experiments_on_two_workers_one_killed_midway_and_run_again_lose_nothing(project):
    queue_sweep(project)
    with running_queue(project, jobs=2):
        killed = kill_a_training_midway(project)
        status = wait_for_queue(project, timeout=1200)
    assert status.count("Success") == 11 and status.count("Failed") == 1, status
    _, _, runs = project.mlflow_runs()
    params = next(run.data.params for run in runs if run.info.run_id == killed)

    # What a user does: drop the failed task, queue its params again, start the queue again.
    project.run("dvc", "queue", "remove", "--failed")
    project.run("dvc", "exp", "run", "--queue", "-S", f"precision={params['precision']}",
                "-S", f"seed={params['seed']}")
    with running_queue(project, jobs=2):
        status = wait_for_queue(project, timeout=600)
    assert status.count("Success") == 12 and "Failed" not in status, status

    runs = assert_sweep_whole(project)
    assert collections.Counter(run.info.status for run in runs) == {"FINISHED": 12, "KILLED": 1}
    dead = next(run for run in runs if run.info.run_id == killed)
    assert dead.info.status == "KILLED" and "hard crash" in dead.data.tags["killed_reason"]

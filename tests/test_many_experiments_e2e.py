"""Many experiments through the local queue, two at a time, on the SQLite store: nothing lost."""

from __future__ import annotations

import pytest

from helpers import Project, make_project, stop_queue, wait_for_queue

pytestmark = pytest.mark.e2e

PRECISIONS = ("fp32", "fp16", "bf16")
EPOCH_METRICS = ("train_loss", "train_accuracy", "epoch_seconds", "epoch_skipped_steps", "lost_updates")


@pytest.fixture
def project(tmp_path, mnist_mirror) -> Project:
    """A repository of its own for each sweep: DVC 3's queue, started again in a
    repository after `dvc queue stop`, was seen to end each new worker after
    one experiment (a pending stop), which no user of these tests should wait on."""
    return make_project(tmp_path, mnist_mirror)


def queue_sweep(project: Project, seeds: tuple[int, ...]) -> None:
    project.run("dvc", "exp", "run", "--queue", "-S", f"precision={','.join(PRECISIONS)}",
                "-S", f"seed={','.join(map(str, seeds))}")
    project.run("dvc", "queue", "start", "--jobs", "2")


def runs_of(project: Project, seeds: tuple[int, ...]):
    client, _, runs = project.mlflow_runs()
    return client, [run for run in runs if int(run.data.params.get("seed", -1)) in seeds]


def assert_whole(client, run) -> None:
    assert run.info.status == "FINISHED"
    for key in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1], key
    assert run.data.metrics["test_accuracy"] >= 0.85
    # 2 cores shared by the experiments running when it started (1 or 2 of them)
    assert run.data.params["threads"] in ("1", "2") and "cores shared by" in run.data.params["threads_from"]


def test_twelve_experiments_on_two_workers_lose_nothing(project):
    seeds = (0, 1, 2, 3)
    queue_sweep(project, seeds)
    status = wait_for_queue(project, timeout=1200)
    assert status.count("Success") == 12, status
    stop_queue(project)
    client, runs = runs_of(project, seeds)
    assert sorted((r.data.params["precision"], int(r.data.params["seed"])) for r in runs) == \
        sorted((p, s) for p in PRECISIONS for s in seeds)
    for run in runs:
        assert_whole(client, run)
    project.run("mnist-precision", "report")
    assert "from 12 finished runs" in (project.root / "reports" / "precision.md").read_text()

"""Many experiments through the local queue, two at a time, on the SQLite store:
nothing lost, and one SIGKILLed midway costs only its own rerun."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
import yaml

from helpers import Project, make_project, stop_queue, wait_for_queue

pytestmark = pytest.mark.e2e

PRECISIONS = ("fp32", "fp16", "bf16")
EPOCH_METRICS = ("train_loss", "train_accuracy", "epoch_seconds", "epoch_skipped_steps", "lost_updates")


@pytest.fixture(scope="module")
def project(tmp_path_factory, mnist_mirror) -> Project:
    return make_project(tmp_path_factory.mktemp("many"), mnist_mirror)


def queue_sweep(project: Project, seeds: tuple[int, ...]) -> None:
    project.run("dvc", "queue", "remove", "--success", "--failed")
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


def train_stage_in_the_queue(project: Project) -> psutil.Process | None:
    queue = (project.root / ".dvc" / "tmp" / "exps").resolve()
    for process in psutil.process_iter(["cmdline", "cwd"]):
        cmdline, cwd = process.info["cmdline"] or [], process.info["cwd"]
        if (len(cmdline) >= 2 and "python" in Path(cmdline[0]).name and cmdline[-1].endswith("stages/train.py")
                and cwd and Path(cwd).is_relative_to(queue)):
            return process  # the stage's interpreter, not the shell that DVC started it with
    return None


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


def test_an_experiment_killed_midway_is_rerun_and_its_run_ends_killed(project):
    seeds = (4, 5, 6, 7)
    queue_sweep(project, seeds)
    deadline = time.monotonic() + 600
    while True:  # a train stage of the queue whose MLflow run has started: kill it there
        assert time.monotonic() < deadline, project.run("dvc", "queue", "status").stdout
        victim = train_stage_in_the_queue(project)
        if victim is not None:
            try:
                _, runs = runs_of(project, seeds)
            except Exception:  # the store is busy being written
                runs = []
            if any(r.data.tags.get("pid") == str(victim.pid) for r in runs):
                break
        time.sleep(0.2)
    params = yaml.safe_load((Path(victim.cwd()) / "params.yaml").read_text())
    victim.kill()  # SIGKILL: no checkpoint of the stop, no end of the run
    status = wait_for_queue(project, timeout=1200)
    assert status.count("Success") == 11 and status.count("Failed") == 1, status
    stop_queue(project)
    _, runs = runs_of(project, seeds)
    # Its run: still RUNNING, or already ended KILLED by a train stage of the sweep that started after it.
    assert [r.info.status for r in runs if r.data.tags.get("pid") == str(victim.pid)] in (["RUNNING"], ["KILLED"])

    project.run("dvc", "queue", "remove", "--failed")
    project.run("dvc", "exp", "run", "--queue", "-S", f"precision={params['precision']}",
                "-S", f"seed={params['seed']}")
    project.run("dvc", "queue", "start", "--jobs", "2")
    status = wait_for_queue(project, timeout=600)
    assert status.count("Success") == 12, status
    stop_queue(project)

    client, runs = runs_of(project, seeds)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert len(finished) == 12 and len(killed) == 1 and len(runs) == 13  # none RUNNING
    assert killed[0].data.tags["pid"] == str(victim.pid) and "hard crash" in killed[0].data.tags["killed_reason"]
    assert (killed[0].data.params["precision"], int(killed[0].data.params["seed"])) == \
        (params["precision"], params["seed"])
    for run in finished:
        assert_whole(client, run)

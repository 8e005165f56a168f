"""A team's workflow across machines, each machine a clone: a DVC remote (a folder
and S3), and a precision sweep whose halves run on two clones' own queues
against one tracking server (restarted in the middle), pulled together in a third."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from helpers import (
    ADMIN,
    S3_KEYS,
    Project,
    QueueEnd,
    Server,
    free_port,
    make_project,
    queue_logs,
    stop_queue,
    wait_for_queue,
)

pytestmark = pytest.mark.slow


def clone(origin: Path, root: Path, env: dict[str, str]) -> Project:
    project = Project(root.parent, env)
    project.run("git", "clone", "-q", str(origin), root.name)
    return Project(root, env)


def published(tmp_path: Path, mnist_mirror: str | None, epochs: int = 1) -> tuple[Project, Path]:
    """The project committed and pushed to a bare Git repository, with a DVC remote folder."""
    seed = make_project(tmp_path / "seed", mnist_mirror, epochs=epochs)
    origin = tmp_path / "origin.git"
    seed.run("git", "init", "-q", "--bare", "-b", "main", str(origin))
    seed.run("dvc", "remote", "add", "-d", "shared", str(tmp_path / "dvc-remote"))
    seed.run("git", "add", "-A")
    seed.run("git", "commit", "-q", "-m", "the shared DVC remote")
    seed.run("git", "remote", "add", "origin", str(origin))
    seed.run("git", "push", "-q", "origin", "main")
    return seed, origin


def test_a_dvc_remote_carries_data_and_models_between_clones(tmp_path, mnist_mirror, s3_endpoint):
    url, _ = s3_endpoint
    seed, origin = published(tmp_path, mnist_mirror)
    seed.env |= S3_KEYS
    seed.run("dvc", "remote", "add", "s3", "s3://mlflow-e2e/dvc")
    seed.run("dvc", "remote", "modify", "s3", "endpointurl", url)
    seed.run("dvc", "repro")
    seed.run("git", "add", "-A")
    seed.run("git", "commit", "-q", "-m", "fp32 baseline")
    seed.run("git", "push", "-q", "origin", "main")
    seed.run("dvc", "push", "--run-cache")  # to the folder, the default remote
    seed.run("dvc", "push", "-r", "s3")

    for remote in ("shared", "s3"):
        machine = clone(origin, tmp_path / f"machine-{remote}", seed.env)
        machine.run("dvc", "pull", "-r", remote)
        assert sorted(p.name for p in (machine.root / "data" / "mnist").iterdir()) == sorted(
            p.name for p in (seed.root / "data" / "mnist").iterdir()
        )
        assert (machine.root / "models" / "model.pt").read_bytes() == (seed.root / "models" / "model.pt").read_bytes()
        out = machine.run("dvc", "repro").stdout  # the same kind of machine: nothing to redo
        assert {"Stage 'train' didn't change, skipping", "Stage 'evaluate' didn't change, skipping"} <= set(
            out.splitlines()
        ), out

    # A machine whose PyTorch dispatches to other kernels (ATEN_CPU_CAPABILITY, as
    # another CPU would): the run-cache it pulled is keyed by the seed's
    # environment, so it is not this machine's answer, and it trains.
    other = clone(origin, tmp_path / "machine-other-cpu", seed.env)
    other.run("dvc", "pull", "--run-cache")
    seeds_environment = hashlib.md5((seed.root / "environment.json").read_bytes()).hexdigest()
    assert train_run_cache_environments(other.root) == [seeds_environment]
    out = other.run("dvc", "exp", "run", env={"ATEN_CPU_CAPABILITY": "default"}).stdout
    assert "Running stage 'train':" in out.splitlines() and "is cached" not in out, out
    assert other.json("environment.json")["cpu_capability"] == "DEFAULT"
    assert hashlib.md5((other.root / "environment.json").read_bytes()).hexdigest() != seeds_environment


def train_run_cache_environments(root: Path) -> list[str]:
    """The environment.json hash of every run-cache entry of the train stage in this clone's DVC cache."""
    entries = [
        yaml.safe_load(path.read_text()) for path in (root / ".dvc" / "cache" / "runs").rglob("*") if path.is_file()
    ]
    return [
        dep["md5"]
        for entry in entries
        if any(out["path"] == "models/model.pt" for out in entry["outs"])
        for dep in entry["deps"]
        if dep["path"] == "environment.json"
    ]


def described(run) -> str:
    """A run as a failed assertion shows it: what ran, how it ended, and why."""
    info = run.info
    return (
        f"{info.run_name} ({info.run_id}): {info.status}, {info.start_time} to {info.end_time}, "
        f"params {run.data.params}, tags {run.data.tags}"
    )


def printed(machines: list[Project], ends: list[QueueEnd]) -> str:
    """What every experiment of every machine printed."""
    return "".join(log for m, end in zip(machines, ends, strict=True) for log in queue_logs(m, end.status))


def runs_on(server: Server) -> list:
    from mlflow import MlflowClient

    saved = {name: os.environ.get(name) for name in ADMIN}
    os.environ.update(ADMIN)
    try:
        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("mnist-precision")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        return [(run, [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]) for run in runs]
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.mark.needs_postgres
def test_a_sweep_split_across_two_machines_meets_in_one_server(tmp_path, mnist_mirror):
    """4 experiments (fp32, bf16 x 2 seeds), 2 clones x 2 queue workers at once,
    against one server that restarts in the middle: every run FINISHED with
    every epoch, and a third clone pulls every experiment."""
    folder = Path(tempfile.mkdtemp(prefix="mnist-precision-team-"))
    folder.chmod(0o711)
    port = free_port()
    server = Server(folder / "data", port).wait_ready()
    try:
        seed, origin = published(tmp_path, mnist_mirror, epochs=2)
        client_env = {"MLFLOW_TRACKING_URI": server.uri, **ADMIN, "OMP_NUM_THREADS": "1"}
        machines = [clone(origin, tmp_path / name, seed.env | client_env) for name in ("machine-a", "machine-b")]
        for machine, seeds in zip(machines, ("0", "1"), strict=True):
            # Two epochs of 300 steps: the server's restart falls between epochs, not learning.
            machine.run(
                "dvc",
                "exp",
                "run",
                "--queue",
                "-S",
                "precision=fp32,bf16",
                "-S",
                f"seed={seeds}",
                "-S",
                "train.max_steps=300",
            )
        for machine in machines:
            machine.run("dvc", "queue", "start", "--jobs", "2")

        deadline = time.monotonic() + 300
        while not any(steps for _, steps in runs_on(server)):  # the first epoch is in
            assert time.monotonic() < deadline, "no epoch reached the server"
            time.sleep(2)
        assert server.stop() == 0
        server = Server(folder / "data", port).wait_ready()  # the same database, the same address

        statuses: list[QueueEnd] = []
        for machine in machines:
            statuses.append(wait_for_queue(machine, timeout=900))
            assert statuses[-1].count("Success") == 2, str(statuses[-1])
            machine.run("dvc", "exp", "push", "origin", "-A")
        runs = runs_on(server)
        assert len(runs) == 4, [described(run) for run, _ in runs] + [printed(machines, statuses)]
        for run, steps in runs:
            assert run.info.status == "FINISHED", described(run) + printed(machines, statuses)
            assert sorted(steps) == [1, 2], (run.info.run_name, steps)
            assert run.data.tags["host"] and run.data.metrics["test_accuracy"] > 0.85
        assert sorted((r.data.params["precision"], r.data.params["seed"]) for r, _ in runs) == sorted(
            (p, str(s)) for p in ("fp32", "bf16") for s in range(2)
        )

        third = clone(origin, tmp_path / "machine-c", seed.env | client_env)
        third.run("dvc", "exp", "pull", "origin", "-A")
        shown = json.loads(third.run("dvc", "exp", "show", "--json", "-A").stdout)
        experiments = [exp for commit in shown for exp in (commit.get("experiments") or [])]
        assert len(experiments) == 4, shown
        report = third.run("mnist-precision", "report").stdout
        assert "Group 1:" in report
        assert "from 4 finished runs" in (third.root / "reports" / "precision.md").read_text()
    finally:
        try:
            for machine in locals().get("machines", []):
                stop_queue(machine)
        finally:
            assert server.stop() == 0, server.log.read_text()
            shutil.rmtree(folder, ignore_errors=True)

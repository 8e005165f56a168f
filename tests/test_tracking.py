"""Where the runs go: the repository's store, found again by every call in a
process, and taking two runs that write the same dataset at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from mnist_precision.base.paths import repo_root
from mnist_precision.core.data import split_files
from mnist_precision.tracking.store import configure, locate

# Two processes, each with a run of its own, log the same new split at the
# same moment (a barrier before each), SPLITS times; each prints its run and
# the errors it met.
TWO_RUNS_AT_ONCE = """
import json, multiprocessing, sys
from pathlib import Path

def log_each(root, splits, barrier, out):
    import mlflow
    from mnist_precision.tracking.lineage import log_split
    from mnist_precision.tracking.store import configure, get_or_create_experiment

    experiment = get_or_create_experiment("lineage", configure(root))
    errors = []
    with mlflow.start_run(experiment_id=experiment) as run:
        for i in range(splits):
            barrier.wait()
            try:
                log_split(root / f"split-{i}", "train", 60000, context="training")
            except Exception as error:
                errors.append(str(error)[:200])
    out.put({"run": run.info.run_id, "errors": errors})

if __name__ == "__main__":
    root, splits = Path(sys.argv[1]), int(sys.argv[2])
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(2), context.Queue()
    workers = [context.Process(target=log_each, args=(root, splits, barrier, out)) for _ in range(2)]
    for worker in workers:
        worker.start()
    print(json.dumps([out.get(timeout=120) for _ in workers]))
    for worker in workers:
        worker.join()
"""
SPLITS = 20


def test_the_repository_store_stays_the_default_after_mlflow_exports_its_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = configure(tmp_path)  # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI
    again = configure(tmp_path)
    assert again == first
    assert first.artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert first.lock == tmp_path / "mlflow.db.lock"


def test_a_users_tracking_uri_is_used_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    chosen = locate(tmp_path)
    assert chosen.uri == f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert chosen.artifact_location is None and chosen.lock is None


def test_queued_experiment_copies_resolve_to_the_repository(tmp_path):
    assert repo_root(tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12cd") == tmp_path.resolve()
    assert repo_root(tmp_path) == tmp_path.resolve()


@pytest.mark.slow
def test_two_runs_logging_the_same_new_split_at_once_both_record_it(tmp_path, monkeypatch):
    """MLflow's store looks a dataset up, then inserts it: of two stages that
    log the same split at once (two queued experiments starting together),
    the second lost that race and its stage failed, in about half of these tries."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for i in range(SPLITS):
        for path in split_files(tmp_path / f"split-{i}", "train"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(32) + bytes([i]))  # a new digest each time
    script = tmp_path / "two_runs.py"
    script.write_text(TWO_RUNS_AT_ONCE)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(SPLITS)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.splitlines()[-1])
    assert [r["errors"] for r in runs] == [[], []]
    client = MlflowClient(configure(tmp_path).uri)
    for run in runs:
        logged = client.get_run(run["run"]).inputs.dataset_inputs
        assert len({d.dataset.digest for d in logged}) == SPLITS

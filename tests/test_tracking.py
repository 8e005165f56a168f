"""Where the runs go: the repository's store, found again by every call in a process."""

from __future__ import annotations

from mnist_precision.base.paths import repo_root
from mnist_precision.tracking.store import configure, locate


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

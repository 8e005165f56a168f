"""The thread budget: each experiment of a repository takes its share of the cores."""

from __future__ import annotations

import subprocess

import pytest

from mnist_precision.core.threads import budget, concurrent_experiments


@pytest.fixture
def repository(tmp_path, monkeypatch):
    """A repository with two experiment copies in DVC's queue folder, one of them busy."""
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    copies = [tmp_path / ".dvc" / "tmp" / "exps" / name for name in ("tmpbusy", "tmpleftover")]
    for copy in copies:
        copy.mkdir(parents=True)
    worker = subprocess.Popen(["sleep", "60"], cwd=copies[0])
    yield tmp_path, copies
    worker.kill()
    worker.wait()


def test_experiments_are_counted_by_the_copies_a_process_works_in(repository, monkeypatch):
    root, (busy, leftover) = repository
    assert concurrent_experiments(root) == 2  # the busy copy, and this run in the workspace
    assert concurrent_experiments(busy) == 1  # this run is the busy copy's
    monkeypatch.chdir(root)
    assert budget("auto", cores=2).threads == 1
    assert budget("auto", cores=8).threads == 4
    assert budget("auto", cores=8).why == "8 cores shared by 2 experiment(s) of this repository"


def test_an_explicit_setting_wins(repository, monkeypatch):
    root, _ = repository
    monkeypatch.chdir(root)
    assert budget(3, cores=2).threads == 3 and budget(3, cores=2).why == "train.threads"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert budget("auto", cores=8).threads == 1 and budget("auto", cores=8).why == "OMP_NUM_THREADS"
    monkeypatch.setenv("OMP_NUM_THREADS", "many")  # not a count: ignored
    assert budget("auto", cores=8).threads == 4


def test_alone_a_run_takes_every_core(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert concurrent_experiments() == 1 and budget("auto", cores=2).threads == 2

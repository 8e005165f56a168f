"""A checkpoint of other params or of another version of this project is refused,
naming what differs and the fix (the train stage's exit code and a corrupt file:
tests/test_faults_e2e.py)."""

from __future__ import annotations

import pytest
import torch

from mnist_precision.base.params import load
from mnist_precision.core import checkpoint
from mnist_precision.core.training import Progress, SavedState

from helpers import REPO_ROOT

STATE = SavedState(model={}, optimizer={}, precision={}, progress=Progress(epoch=1))


@pytest.fixture
def expected():
    return checkpoint.fingerprint(load(REPO_ROOT / "params.yaml"), torch.device("cpu"))


def test_a_checkpoint_for_other_params_is_refused_naming_them(tmp_path, expected):
    path = tmp_path / "train.pt"
    checkpoint.save(path, STATE, expected | {"precision": "fp16", "seed": 7}, "run-id")
    with pytest.raises(checkpoint.CheckpointError) as refused:
        checkpoint.load(path, expected, epochs=5)
    assert str(refused.value) == (
        f"{path} was written for other params (precision was 'fp16', params say "
        f"{expected['precision']!r}; seed was 7, params say {expected['seed']!r}): "
        f"restore them to resume, or delete {path} to train from the start"
    )


def test_a_checkpoint_of_another_version_is_refused(tmp_path, expected):
    path = tmp_path / "train.pt"
    checkpoint.save(path, STATE, expected, "run-id")
    torch.save(torch.load(path, weights_only=True) | {"format": "mnist-precision-checkpoint/1"}, path)
    with pytest.raises(
        checkpoint.CheckpointError,
        match=(
            "was written by another version of this project \\(format mnist-precision-checkpoint/1, "
            f"this one reads {checkpoint.FORMAT}\\); delete .*train.pt"
        ),
    ):
        checkpoint.load(path, expected, epochs=5)


def test_a_checkpoint_of_its_params_loads(tmp_path, expected):
    path = tmp_path / "train.pt"
    checkpoint.save(path, STATE, expected, "run-id")
    assert checkpoint.load(path, expected, epochs=5) == checkpoint.Checkpoint(STATE, "run-id")

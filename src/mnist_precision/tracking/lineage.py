"""What data a run was trained and evaluated on, where MLflow users look for it:
each split as an input of the run (`mlflow.log_input`: the UI's Datasets),
named and with the digest of its files, and the hash DVC's lock gives the
data, so that MLflow and DVC name the same bytes."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import mlflow
import numpy as np
import yaml
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException
from mlflow.types import Schema, TensorSpec

from mnist_precision.base import names, paths
from mnist_precision.core.data import split_files
from mnist_precision.core.download import mirrors_from_env, normalize_mirror

SCHEMA = Schema([TensorSpec(np.dtype(np.uint8), (-1, 28, 28), "image"), TensorSpec(np.dtype(np.uint8), (-1,), "label")])


def split_digest(data_dir: Path, split: str) -> str:
    """MD5 of the split's two files, images then labels, as downloaded."""
    digest = hashlib.md5()
    for path in split_files(data_dir, split):
        digest.update(path.read_bytes())
    return digest.hexdigest()


class Split(MetaDataset):
    """A split by its files' digest, with its size as the UI's profile."""

    def __init__(self, data_dir: Path, split: str, images: int):
        # Where the download stage fetches it in this environment (MNIST_MIRROR,
        # else the first public mirror); the digest says which bytes arrived.
        source = HTTPDatasetSource(normalize_mirror(mirrors_from_env()[0]))
        super().__init__(source, name=f"mnist-{split}", digest=split_digest(data_dir, split), schema=SCHEMA)
        self.images = images

    @property
    def profile(self) -> dict[str, int]:
        return {"num_images": self.images}


# The error of a store whose datasets table already holds the row being
# inserted: SQLite's, PostgreSQL's (through a tracking server), MySQL 8's.
DUPLICATE_DATASET = re.compile(r"UNIQUE constraint failed: datasets\.|\"dataset_pk\"|for key 'datasets\.PRIMARY'")


def log_split(data_dir: Path, split: str, images: int, context: str) -> None:
    """Record MNIST's `split` (`images` of them) as an input of the active
    run, in `context` ("training" or "evaluation")."""
    dataset = Split(data_dir, split, images)
    try:
        mlflow.log_input(dataset, context=context)
    except MlflowException as error:
        if not DUPLICATE_DATASET.search(str(error.message)):
            raise
        # MLflow's store looks the dataset up, then inserts it: a stage of
        # another experiment logged the same split in between (two queued
        # experiments starting together). That transaction rolled back whole,
        # and the row it lost to is there now, so the second try links it.
        mlflow.log_input(dataset, context=context)


def dvc_data_hash(lock: Path = paths.DVC_LOCK) -> str | None:
    """The hash `dvc.lock` records for the downloaded data, if DVC ran the download."""
    try:
        stages = yaml.safe_load(lock.read_text())["stages"]
    except (FileNotFoundError, KeyError, TypeError):
        return None
    outs = stages.get("download", {}).get("outs", [])
    return next((out.get("md5") for out in outs if out.get("path") == str(paths.DATA_DIR)), None)


def tag_dvc_data_hash() -> None:
    value = dvc_data_hash()
    if value:
        mlflow.set_tag(names.DVC_DATA_HASH, value)

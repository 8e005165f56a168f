"""DVC stage `train` (see dvc.yaml); the work is in mnist_precision.pipeline.train_stage,
which mnist_precision.pipeline.train_entry imports in the processes that train."""

from mnist_precision.base.entry import run_stage
from mnist_precision.pipeline.train_entry import main

if __name__ == "__main__":
    run_stage("train", main)

"""DVC stage `evaluate` (see dvc.yaml); the work is in mnist_precision.pipeline.evaluate_stage."""

from mnist_precision.base.entry import run_stage
from mnist_precision.pipeline.evaluate_stage import main

if __name__ == "__main__":
    run_stage("evaluate", main)

"""DVC stage `evaluate` (see dvc.yaml); the work is in mnist_precision.evaluate_stage."""

from mnist_precision.entry import run_stage
from mnist_precision.evaluate_stage import main

if __name__ == "__main__":
    run_stage("evaluate", main)

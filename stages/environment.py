"""DVC stage `environment` (see dvc.yaml); the work is in mnist_precision.pipeline.environment_stage."""

from mnist_precision.base.entry import run_stage
from mnist_precision.pipeline.environment_stage import main

if __name__ == "__main__":
    run_stage("environment", main)

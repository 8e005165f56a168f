"""DVC stage `download` (see dvc.yaml); the work is in mnist_precision.pipeline.download_stage."""

from mnist_precision.base.entry import run_stage
from mnist_precision.pipeline.download_stage import main

if __name__ == "__main__":
    run_stage("download", main)

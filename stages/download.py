"""DVC stage `download` (see dvc.yaml); the work is in mnist_precision.download_stage."""

from mnist_precision.entry import run_stage
from mnist_precision.download_stage import main

if __name__ == "__main__":
    run_stage("download", main)

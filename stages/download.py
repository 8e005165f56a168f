"""DVC stage `download`: fetch the four MNIST files and verify their checksums."""

from mnist_precision.base import paths
from mnist_precision.base.entry import run_stage
from mnist_precision.core.download import download_mnist


def main() -> None:
    for path in download_mnist(paths.DATA_DIR):
        print(f"verified {path}")


if __name__ == "__main__":
    run_stage("download", main)

"""The `download` stage: fetch and verify the four MNIST files."""

from mnist_precision.base import paths
from mnist_precision.core.download import download_mnist


def main() -> None:
    for path in download_mnist(paths.DATA_DIR):
        print(f"verified {path}")

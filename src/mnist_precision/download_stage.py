"""The `download` stage: fetch and verify the four MNIST files."""

from . import paths
from .download import download_mnist


def main() -> None:
    for path in download_mnist(paths.DATA_DIR):
        print(f"verified {path}")

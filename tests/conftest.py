"""Shared fixtures: the real MNIST files, served over HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mnist_precision.download import download_mnist

from helpers import SHARED_MNIST, serve_directory


@pytest.fixture(scope="session")
def mnist_mirror() -> Iterator[str | None]:
    """A URL serving the real MNIST files on 127.0.0.1, or None where the offline
    copy is absent (a user's own machine): then the public mirrors are used."""
    if not SHARED_MNIST.is_dir():
        yield None
        return
    with serve_directory(SHARED_MNIST) as url:
        yield url


@pytest.fixture(scope="session")
def mnist_data(tmp_path_factory, mnist_mirror) -> Path:
    """The four MNIST files, downloaded once (through the real downloader) for the stage tests."""
    data = tmp_path_factory.mktemp("mnist")
    download_mnist(data, [mnist_mirror] if mnist_mirror else None)
    return data

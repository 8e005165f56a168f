"""Shared fixtures: the real MNIST files, served over HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real data set, laid beside the checkout on these machines (and in CI).
SHARED_MNIST = REPO_ROOT.parent / "shared" / "mnist"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def serve_directory(directory: Path, handler=QuietHandler) -> Iterator[str]:
    """Serve `directory` over HTTP on 127.0.0.1 (a free port); yield its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def mnist_mirror() -> Iterator[str | None]:
    """A URL serving the real MNIST files on 127.0.0.1, or None where the offline
    copy is absent (a user's own machine): then the public mirrors are used."""
    if not SHARED_MNIST.is_dir():
        yield None
        return
    with serve_directory(SHARED_MNIST) as url:
        yield url

"""SIGTERM as an exception, so that a stopped stage closes its files and its MLflow run."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(BaseException):
    """The process received SIGTERM (DVC, a scheduler or the user is stopping it)."""


def _raise_interrupted(signum, frame):
    raise Interrupted(f"received {signal.Signals(signum).name}")


@contextmanager
def sigterm_raises() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

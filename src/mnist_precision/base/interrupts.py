"""Signals as orderly stops, so that a stopped stage closes its files and its MLflow run."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOPS = (signal.SIGINT, signal.SIGTERM)
Handler = Callable[[int, FrameType | None], object]


@contextmanager
def handling(handler: Handler, signals: tuple[signal.Signals, ...] = STOPS) -> Iterator[None]:
    """`handler` for `signals` while the block runs, and the handlers they had before after it."""
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, before in previous.items():
            signal.signal(s, before)


class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped the work (the user, DVC or a scheduler)."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def _raise_interrupted(signum, frame):
    raise Interrupted(f"received {signal.Signals(signum).name}", signum)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    with handling(_raise_interrupted, (signal.SIGTERM,)):
        yield


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while a block that must finish runs (ending an
    MLflow run: a run cut off there stays RUNNING). A signal that came is
    raised after the block, unless an error is already on its way out."""
    received: list[int] = []
    with handling(lambda signum, frame: received.append(signum)):
        yield
    if received:
        raise Interrupted(f"received {signal.Signals(received[0]).name}", received[0])


class StopRequest:
    """Set by SIGINT or SIGTERM while active, for a loop to stop at a safe point
    (between two steps, never inside an optimizer update). A second signal
    stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum, frame):
        if self:
            raise Interrupted(f"received {signal.Signals(signum).name} twice", signum)
        self.signum = signum

    @contextmanager
    def active(self) -> Iterator[StopRequest]:
        with handling(self._handle):
            yield self

"""SIGINT and SIGTERM during a run: raised as ``Interrupted`` (a KeyboardInterrupt) in the main
thread, so that ``timeout``, ``docker stop`` or a CI cancel stop a run as cleanly as Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; ``exit_code`` is 128 + its number (130 SIGINT, 143 SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def _raise(signum: int, frame: FrameType | None) -> None:
    # From the first signal on, the run is shutting down: a second Ctrl-C (or a SIGTERM after
    # it) must not cut the clean-up short. The handlers come back when the run's block ends.
    for s in HANDLED:
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def _handlers(handler: signal.Handlers | object) -> Iterator[None]:
    # Only the main thread may set handlers; a run driven from another thread keeps the
    # process's own.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in HANDLED}  # type: ignore[arg-type]
    try:
        yield
    finally:
        for s, old in previous.items():
            if old is not None:  # None: a handler set from C, which Python cannot restore
                signal.signal(s, old)


def interrupts_raise() -> contextlib.AbstractContextManager[None]:
    """While inside, SIGINT and SIGTERM raise ``Interrupted`` in the main thread."""
    return _handlers(_raise)


def interrupts_ignored() -> contextlib.AbstractContextManager[None]:
    """While inside, SIGINT and SIGTERM are ignored: clean-up a second Ctrl-C must not cut."""
    return _handlers(signal.SIG_IGN)


class Deferred:
    """The first SIGINT or SIGTERM that came inside ``interrupts_deferred``, if any."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def check(self) -> None:
        """Raise ``Interrupted`` for the signal that came, if one did."""
        if self.signum is not None:
            raise Interrupted(self.signum)


def interrupts_deferred() -> contextlib.AbstractContextManager[Deferred]:
    """While inside, the first SIGINT or SIGTERM is only noted (``Deferred.signum``; later ones
    are ignored) for the caller to stop where it chooses (``check``): for a loop over code that
    must not see an exception at an arbitrary point (Ray's client: a shutdown after one that
    lands inside it can end the process with status 1 before camcli says anything)."""
    return _deferred()


@contextlib.contextmanager
def _deferred() -> Iterator[Deferred]:
    deferred = Deferred()

    def note(signum: int, frame: FrameType | None) -> None:
        for s in HANDLED:
            signal.signal(s, signal.SIG_IGN)
        deferred.signum = signum

    with _handlers(note):
        yield deferred

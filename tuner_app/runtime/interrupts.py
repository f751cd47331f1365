"""SIGTERM and Ctrl-C stop a search at the next safe point instead of mid-statement.

A signal handler that raises can fire inside a finalizer, where Python swallows the
exception. So the handlers only record the request; the search checks it at safe
points (the start of every training/validation batch, every fold and every trial) and
raises `SearchInterrupted` from there. A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import signal

from tuner_app.errors import SearchInterrupted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested: int | None = None
_immediate = False


def _handler(signum, frame):
    global _requested
    if _requested is not None or _immediate:  # asked twice, or nothing to wait for: stop now
        raise SearchInterrupted(signum)
    _requested = signum


@contextlib.contextmanager
def handling(handler, signals=STOP_SIGNALS):
    """Install `handler` for `signals` meanwhile (the one place tuner-app sets signal handlers)."""
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def stop_on_signals(immediate: bool = False):
    """While active, SIGTERM/SIGINT request a stop that `check()` turns into SearchInterrupted.

    Args:
        immediate: Raise from the handler at once (a chief that only serves the oracle
            and never reaches a check point).
    """
    global _requested, _immediate
    _requested, _immediate = None, immediate
    try:
        with handling(_handler):
            yield
            check()
    finally:
        _requested = None


@contextlib.contextmanager
def kept(signals=STOP_SIGNALS):
    """Whatever a library does to the handlers of `signals` meanwhile, they are tuner-app's again
    afterwards (Ray's start-up installs its own, in Python and in its C++ core, which aborts)."""
    previous = {s: signal.getsignal(s) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            if handler is not None:
                signal.signal(s, handler)


def check() -> None:
    """Raise SearchInterrupted if a stop was requested."""
    if _requested is not None:
        raise SearchInterrupted(_requested)


def keras_callback():
    """A Keras callback that calls `check()` before every batch (no logs, so no device sync)."""
    import keras

    class _Check(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            check()

        def on_test_batch_begin(self, batch, logs=None):
            check()

    return _Check()

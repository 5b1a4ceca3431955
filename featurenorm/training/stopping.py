"""Stopping training on SIGINT/SIGTERM, in bounded time even when a step is stuck in C++."""
from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from typing import Any


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived; the loop finished its step and saved."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


class SignalFlag:
    """Stop training on SIGINT/SIGTERM, in bounded time.

    The first signal sets :attr:`signum`; the loop finishes its step, calls :meth:`saving` and saves.
    A second signal, or no :meth:`saving` within ``grace`` seconds of the first, ends the process at
    once with status ``128 + signum``. ``last.pt`` is written atomically, so it then still holds the
    last state that was saved.

    Python runs signal handlers in the main thread, between bytecodes only: a step stuck in a long
    C++ call (a hung oneDNN kernel, a dead collective) would never see them. The interpreter's C-level
    handler, though, writes each signal's number to the wakeup fd at once, and a watcher thread
    blocked on that socket wakes whatever the main thread is doing (torch releases the GIL in its ops).
    """

    _SAVING, _CLOSE = b"\x00", b"\xff"  # messages from the loop to the watcher (signal numbers are 1..64)

    def __init__(self, grace: float = 30.0):
        self.signum: int | None = None
        self.grace = grace
        self._old: dict[int, Any] = {}
        self._old_wakeup: int | None = None
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> "SignalFlag":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread's handlers only: nothing to catch here
        self._receive, self._send = socket.socketpair()
        self._send.setblocking(False)
        self._old_wakeup = signal.set_wakeup_fd(self._send.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        self._watcher = threading.Thread(target=self._watch, name="featurenorm-stop-watcher", daemon=True)
        self._watcher.start()
        return self

    def _handle(self, signum, frame) -> None:
        # the watcher has seen it too; this keeps the default action (death, KeyboardInterrupt) away
        self.signum = self.signum or signum

    def saving(self) -> None:
        """The loop finished its step and now saves: the grace period no longer applies."""
        if self._watcher is not None:
            self._send.send(self._SAVING)

    def _watch(self) -> None:
        first_at: float | None = None
        saving = False
        while True:
            timeout = None if first_at is None or saving else max(0.0, first_at + self.grace - time.monotonic())
            if not select.select([self._receive], [], [], timeout)[0]:
                exit_now(self.signum, f"the step did not finish within stop_grace_seconds={self.grace:g}; "
                                       "ending now, last.pt holds the last saved state")
            for byte in self._receive.recv(64):
                if byte == self._CLOSE[0]:
                    return
                if byte == self._SAVING[0]:
                    saving = True
                elif byte in (signal.SIGINT, signal.SIGTERM):
                    if first_at is not None:
                        exit_now(byte, f"second {signal.Signals(byte).name}: ending now, last.pt holds the last "
                                        "saved state")
                    self.signum, first_at = byte, time.monotonic()

    def __exit__(self, *exc) -> None:
        if self._watcher is None:
            return
        signal.set_wakeup_fd(self._old_wakeup)
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._send.send(self._CLOSE)
        self._watcher.join()
        self._receive.close()
        self._send.close()


def exit_now(signum: int, why: str) -> None:
    """End the process at once from the watcher thread (no cleanup: the main thread may be stuck)."""
    os.write(2, f"\n{why}\n".encode())
    os._exit(128 + signum)

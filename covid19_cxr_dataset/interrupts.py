"""Signals, as the ``cxr-dataset`` program handles them, and worker processes that never outlive it.

Ctrl-C (SIGINT), SIGTERM and SIGHUP stop a command the same way: the program's handlers (``install``,
called on the first line of ``covid19_cxr_dataset.__main__``, never by the library) raise
``KeyboardInterrupt`` for Ctrl-C and ``Terminated`` (a ``KeyboardInterrupt``) for the others, so every
cleanup written for Ctrl-C runs for all three: the staging folder is removed, worker processes are
stopped, and the command exits with 128 + the signal's number (``exit_code``).

While that cleanup runs, a second signal is ignored (``GRACE_SECONDS``), so a double Ctrl-C cannot
cut the cleanup short and leave a half-removed folder; after the grace period one more signal stops
the program as the first did. Once the work is complete (``work_complete``: a release renamed into
place), every later signal is ignored: the command finishes and exits 0. When a command ends, Ctrl-C is
left to the kernel to ignore (``exiting``), as Python restores default handlers while it shuts down.

``worker_pool`` is the one way the package starts worker processes: they ignore Ctrl-C (the terminal
sends it to the whole process group; the parent decides), die with the parent (Linux), and are
terminated, not waited for, when the parent stops on any exception.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

GRACE_SECONDS = 20.0
"""How long after the first signal further ones are ignored, so the cleanup it started can finish."""

_HANDLED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C raises ``KeyboardInterrupt``: the same cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _State:
    installed = False
    owner = 0  # the process that installed the handlers (a forked child inherits them until it resets them)
    complete = False  # the work is done: signals are ignored from now on
    first: float | None = None  # time.monotonic() of the first signal


def install() -> None:
    """Handle SIGINT, SIGTERM and SIGHUP as described above (main thread only; process-wide, for good)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in _HANDLED:
        signal.signal(signum, _handler)
    _State.installed, _State.owner = True, os.getpid()


def _handler(signum: int, frame) -> None:
    if os.getpid() != _State.owner:  # a worker just forked, before its initializer ran: Ctrl-C is the parent's
        if signum == signal.SIGINT:
            return
        os._exit(128 + signum)
    now = time.monotonic()
    if _State.complete:
        _note("the work is complete; finishing")
        return
    if _State.first is not None and now - _State.first < GRACE_SECONDS:
        _note("stopping: cleaning up")
        return
    _State.first = now
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _note(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"\n{text}\n".encode())


def work_complete() -> None:
    """The command's output is in place: from now on the program's handlers ignore every signal (so the
    command exits 0 whatever arrives). Without the handlers (library use), this changes nothing."""
    _State.complete = True
    if _State.installed:
        exiting()


def exiting() -> None:
    """Nothing is left to interrupt: Ctrl-C is ignored by the kernel from now on (SIG_IGN). Python hands a
    signal back to its default action while the interpreter shuts down, and a Ctrl-C then would end the
    process with -2 instead of the exit code the command chose."""
    if _State.installed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def exit_code(stopped: BaseException) -> int:
    """128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + (stopped.signum if isinstance(stopped, Terminated) else signal.SIGINT)


def describe(stopped: BaseException) -> str:
    """``interrupted`` or ``terminated (SIGTERM)``: how a message names what stopped the command."""
    if isinstance(stopped, Terminated):
        return f"terminated ({signal.Signals(stopped.signum).name})"
    return "interrupted"


# ---- worker processes ------------------------------------------------------------------------------

def _worker_started(parent: int) -> None:
    """In each worker: the terminal's Ctrl-C is the parent's to handle; SIGTERM ends the worker at once;
    the worker dies with its parent even when that one is killed outright (Linux: PR_SET_PDEATHSIG)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
            if os.getppid() != parent:  # the parent died before the line above: follow it
                os._exit(1)


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool for ``workers`` processes (see the module docstring). On a normal exit the pool is
    shut down as usual; on any exception (Ctrl-C, SIGTERM, an error) pending work is dropped and the
    workers are terminated before the exception goes on, so none outlives the command."""
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(workers, initializer=_worker_started, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        stop_workers(pool)
        raise
    pool.shutdown(wait=True)


def stop_workers(pool: ProcessPoolExecutor, timeout: float = 5.0) -> None:
    """Drop the pool's pending work and end its worker processes now (SIGTERM, then SIGKILL after ``timeout``)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1.0)

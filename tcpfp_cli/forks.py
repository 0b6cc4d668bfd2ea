"""Tasks run in forked worker processes; results come back in task order.

Why not ``multiprocessing.Pool``: a Pool whose worker dies while it writes a
result can wait forever (seen: SIGINT 0.8 s into a 1M-line report left the
command hanging in ``Pool.terminate``).  Here each worker is a plain
``fork`` with its own pipe, which keeps the rules simple:

- worker k of n runs tasks k, k + n, k + 2n, ... in order and writes one
  pickled result per task to its pipe (widened to 1 MiB, so it rarely waits
  for the parent to read); the parent reads them in task order;
- workers ignore SIGINT (Ctrl-C is the parent's to act on) and ask the kernel
  to kill them when the parent ends, however it ends (``PR_SET_PDEATHSIG``);
- when the parent stops reading, for whatever reason, every worker is killed
  by PID and reaped, so none outlives the call;
- a worker's ``TcpfpError`` is raised in the parent as it is; any other
  exception, or a worker that dies, is a ``WorkerError``.

Workers are forked after the caller's imports and set-up, so they start at
once and share the parent's pages; ``gc.freeze`` keeps their collectors off
the inherited objects (and so those pages shared).  Linux only (``fork``,
``prctl``); callers check ``available()``.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import os
import pickle
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO, TypeVar

from .errors import TcpfpError

__all__ = ["WorkerError", "available", "run_in_forks"]

T = TypeVar("T")
R = TypeVar("R")

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # linux/fcntl.h
_PIPE_BYTES = 1 << 20


class WorkerError(TcpfpError):
    """A worker process failed or ended without its result; ``pid`` is the worker's."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


def available() -> bool:
    return hasattr(os, "fork")


def run_in_forks(tasks: Sequence[T], work: Callable[[T], R], workers: int, *,
                 start: Callable[[], None] | None = None) -> Iterator[R]:
    """``work(task)`` of every task, in task order, computed by up to ``workers`` forked processes.

    ``start`` runs once in each worker before its first task.  Use the iterator in
    ``contextlib.closing`` (or run it to its end): closing it, or an exception while
    it runs, kills and reaps the workers.
    """
    count = max(1, min(workers, len(tasks)))
    children: list[tuple[int, BinaryIO]] = []
    parent = os.getpid()
    gc.freeze()
    try:
        for k in range(count):
            read_end, write_end = os.pipe()
            _widen(write_end)
            pid = os.fork()
            if pid == 0:
                os.close(read_end)
                _worker(write_end, tasks[k::count], work, start, parent)  # never returns
            os.close(write_end)
            children.append((pid, os.fdopen(read_end, "rb")))
        gc.unfreeze()
        for i in range(len(tasks)):
            pid, stream = children[i % count]
            yield _receive(stream, pid)
    finally:
        gc.unfreeze()
        for pid, stream in children:
            try:
                os.kill(pid, signal.SIGKILL)  # done already, or no longer wanted
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            stream.close()


def _widen(fd: int) -> None:
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
    except OSError:
        pass  # the default size only means a worker may wait for the parent to read


def _worker(fd: int, tasks: Sequence[T], work: Callable[[T], R], start: Callable[[], None] | None,
            parent: int) -> None:
    """A worker process: ``work`` each task in order, one pickled result each, then exit."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with(parent)
        if start is not None:
            start()
        with os.fdopen(fd, "wb") as out:
            for task in tasks:
                try:
                    result: tuple[str, object] = ("ok", work(task))
                except TcpfpError as error:  # pickles with its attributes (errors.py)
                    result, code = ("error", error), 1
                except Exception as error:  # noqa: BLE001 - a bug: say what it was, in the parent
                    result, code = ("error", WorkerError(
                        f"a worker process failed: {type(error).__name__}: {error}", os.getpid())), 1
                pickle.dump(result, out, protocol=pickle.HIGHEST_PROTOCOL)
                out.flush()
                if code:
                    break
    except BaseException:  # noqa: BLE001 - a worker must never return into the parent's code
        code = 2
    finally:
        os._exit(code)


def _die_with(parent: int) -> None:
    """Have the kernel kill this worker when the parent ends (Linux prctl)."""
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent ended before prctl took effect
        os._exit(1)


def _receive(stream: BinaryIO, pid: int) -> R:  # type: ignore[type-var]
    """The next result of worker ``pid``; its error raised here."""
    try:
        kind, value = pickle.load(stream)
    except Exception as error:  # noqa: BLE001 - a cut or garbled result: the worker died
        raise WorkerError(f"a worker process (PID {pid}) ended without its result "
                          f"({error or 'no data'})", pid) from None
    if kind == "error":
        raise value
    return value

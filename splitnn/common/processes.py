"""The splitnn programs as child processes: a server in the background, one-shot JSON runs.

Used by the orchestrators (`splitnn-sim`, `splitnn-experiments`), never by the parties
themselves. Each child's stderr goes to a log file, or to ours when no log is given. Console
scripts are taken from beside this interpreter (the same virtualenv).

Every child started here is known to `CHILDREN`, so that an orchestrator that is interrupted
(Ctrl-C, or SIGTERM once `raise_on_sigterm` is installed) stops all of them, the ones its worker
threads wait on included, and starts no more: none is left running without its parent.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import IO, Any

from splitnn.common import exits

logger = logging.getLogger(__name__)

_TAIL_LINES = 15
# The line `splitnn-server` prints on stdout once bound, e.g. "listening on 127.0.0.1:50051".
_LISTENING = re.compile(r"listening on (\S+:\d+)")
# Settings of the children come from the flags we pass, never from the caller's environment.
_CHILD_PREFIXES = ("SPLITNN_SERVER_", "SPLITNN_CLIENT_", "SPLITNN_ATTACK_", "SPLITNN_SIM_")


class ProcessError(exits.Failed, RuntimeError):
    """A program failed; the message carries the end of its log."""


class ChildAlarm(ProcessError, exits.Alarm):
    """A program stopped at its defence's alarm (exit code 4): so does the one that ran it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM reached an orchestrator: it ends as if interrupted (exit 130), its children
    stopped."""


STOP_TIMEOUT_S = 60.0
"""How long a child may take to end after SIGTERM before it is killed (a server finishes its
in-flight steps and saves within its --grace + 5 s; a simulation stops its own children)."""


class Children:
    """The live child processes of this process, and whether it is stopping.

    While `stop_all` stops them, and until `accept_new`, `start` refuses to start another
    (raises `Terminated`): a worker thread that was between two programs of its run does not
    start the next.
    """

    def __init__(self) -> None:
        self._live: set[subprocess.Popen[Any]] = set()
        self._lock = threading.Lock()
        self._stopping = False

    @property
    def stopping(self) -> bool:
        return self._stopping

    def live(self) -> list[subprocess.Popen[Any]]:
        """The children started here that have not ended."""
        with self._lock:
            return [p for p in self._live if p.poll() is None]

    def start(self, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """`subprocess.Popen(argv, **popen)`, known until `wait` or `stop_all` sees it end.

        Raises:
            Terminated: `stop_all` has run and `accept_new` has not.
        """
        with self._lock:
            if self._stopping:
                raise Terminated("stopping: no further program is started")
            process = subprocess.Popen(list(argv), **popen)
            self._live.add(process)
        return process

    def wait(
        self, process: subprocess.Popen[Any], *, stdout: bool = False
    ) -> tuple[int, str | None]:
        """Waits for `process` to end: its exit status and (`stdout`) what it printed.

        Interrupted (KeyboardInterrupt, `Terminated`) or failing while waiting, it stops the
        child first (`stop`), then raises.
        """
        try:
            out = process.communicate()[0] if stdout else None
            return process.wait(), out
        except BaseException:
            stop(process)
            raise
        finally:
            self.forget(process)

    def forget(self, process: subprocess.Popen[Any]) -> None:
        """`process` has ended or is another's to stop: no longer one of `live`."""
        with self._lock:
            self._live.discard(process)

    def stop_all(self, timeout: float = STOP_TIMEOUT_S, *, refuse_new: bool = True) -> None:
        """Stops every live child: SIGTERM to all at once, then SIGKILL to those still running
        `timeout` seconds later. With `refuse_new`, `start` refuses from now on, until
        `accept_new`."""
        with self._lock:
            self._stopping = self._stopping or refuse_new
            live = [p for p in self._live if p.poll() is None]
        if live:
            logger.warning("stopping %d child process(es)", len(live))
        for process in live:
            _signal(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in live:
            stop(process, timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._live.difference_update(live)

    def accept_new(self) -> None:
        """`start` starts children again (the threads that were stopped have ended)."""
        with self._lock:
            self._stopping = False


CHILDREN = Children()
"""This process's children (every program started through this module)."""


def _signal(process: subprocess.Popen[Any], signum: int) -> None:
    with suppress(ProcessLookupError):  # ended in between
        process.send_signal(signum)


def stop(process: subprocess.Popen[Any], *, timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM to `process` (if it runs), wait up to `timeout` seconds, then SIGKILL; its exit
    status."""
    if process.poll() is None:
        _signal(process, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %g s: killing it", _name(process), timeout)
            process.kill()
    return process.wait()


def _name(process: subprocess.Popen[Any]) -> str:
    args = process.args
    first = args[0] if isinstance(args, (list, tuple)) and args else args
    return Path(str(first)).name


@contextmanager
def worker_pool(
    workers: int, *, stop_on: tuple[type[BaseException], ...] = (KeyboardInterrupt,)
) -> Iterator[ThreadPoolExecutor]:
    """A pool of `workers` threads whose work runs programs. Interrupted (an exception of
    `stop_on`) in the thread that waits on it, it drops the work not yet started and stops every
    child (`CHILDREN.stop_all`) before it waits for its threads, which would otherwise wait on
    their children and go on to the queued work."""
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        yield pool
    except stop_on:
        pool.shutdown(wait=False, cancel_futures=True)
        CHILDREN.stop_all()
        pool.shutdown(wait=True)
        CHILDREN.accept_new()  # its threads have ended: none of them starts another
        raise
    finally:
        pool.shutdown(wait=True)


def raise_on_sigterm() -> None:
    """From now on SIGTERM raises `Terminated` in the main thread (call it from there), so that
    an orchestrator unwinds as on Ctrl-C and stops its children instead of leaving them
    running."""

    def handle(_signum: int, _frame: FrameType | None) -> None:
        raise Terminated("terminated (SIGTERM)")

    signal.signal(signal.SIGTERM, handle)


def listening_address(line: str) -> str | None:
    """The HOST:PORT of the server's startup line ``listening on HOST:PORT``; None for any other."""
    found = _LISTENING.fullmatch(line.strip())
    return found.group(1) if found else None


def program(name: str) -> str:
    """The path of console script `name` beside `sys.executable`."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise ProcessError(f"{name} is not installed beside {sys.executable} (pip install -e .)")
    return str(path)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the children's SPLITNN_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CHILD_PREFIXES)}
    return {**env, **(extra or {})}


def log_tail(path: Path, lines: int = _TAIL_LINES) -> str:
    """The last `lines` lines of a log file, for error messages ("" if there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ServerProcess:
    """`splitnn-server --port PORT ...` in the background; `address` once it has bound.

    Args:
        args: flags after ``--port PORT``.
        log: the server's stderr is appended here (None: to our stderr).
        start_timeout: seconds to wait for the ``listening on HOST:PORT`` line.
        port: 0 picks a free port (read it back from `address`).
    """

    def __init__(
        self,
        args: list[str],
        *,
        log: IO[str] | None = None,
        start_timeout: float = 120.0,
        port: int = 0,
    ) -> None:
        self.process = CHILDREN.start(
            [program("splitnn-server"), "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=child_env(),
        )
        try:
            self.address = self._wait_bound(start_timeout)
        except BaseException:  # interrupted while it starts (an FSHA server pre-trains first)
            self.stop()
            raise

    def _wait_bound(self, timeout: float) -> str:
        found: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.process.stdout is not None
            # Reads to the end, so a chatty server never blocks on a full pipe.
            for line in self.process.stdout:
                if not found and (address := listening_address(line)) is not None:
                    found.append(address)
                    ready.set()
            ready.set()  # end of output: the server has exited

        threading.Thread(target=read, daemon=True).start()
        in_time = ready.wait(timeout)
        if not found:
            code = self.stop()
            why = f"exit status {code}" if in_time else f"not listening after {timeout:g} s"
            raise ProcessError(f"splitnn-server did not start ({why})")
        return found[0]

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait for the graceful shutdown (SIGKILL if it hangs); the exit status."""
        try:
            return stop(self.process, timeout=timeout)
        finally:
            CHILDREN.forget(self.process)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def run_json(
    name: str, args: list[str], *, log: IO[str] | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Runs program `name` with `args` to completion; the last JSON object it printed.

    Raises:
        ProcessError: non-zero exit, or no JSON line on stdout.
    """
    process = CHILDREN.start(
        [program(name), *args],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=child_env(env),
    )
    code, out = CHILDREN.wait(process, stdout=True)
    if code == exits.ALARM:
        raise ChildAlarm(f"{name} stopped at its guard's alarm (exit status {exits.ALARM})")
    if code != 0:
        raise ProcessError(f"{name} exited with status {code}")
    lines = [line for line in (out or "").splitlines() if line.startswith("{")]
    if not lines:
        raise ProcessError(f"{name} printed no JSON result")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_checked(
    name: str, args: list[str], *, log: IO[str], env: dict[str, str] | None = None
) -> None:
    """Runs program `name` with `args` to completion, its output to `log`.

    Raises:
        ProcessError: non-zero exit.
    """
    process = CHILDREN.start([program(name), *args], stdout=log, stderr=log, env=child_env(env))
    code, _ = CHILDREN.wait(process)
    if code != 0:
        raise ProcessError(f"{name} exited with status {code}")

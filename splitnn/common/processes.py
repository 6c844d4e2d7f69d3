"""The splitnn programs as child processes: a server in the background, one-shot JSON runs.

Used by the orchestrators (`splitnn-sim`, `splitnn-experiments`), never by the parties
themselves. Each child's stderr goes to a log file, or to ours when no log is given. Console
scripts are taken from beside this interpreter (the same virtualenv).
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
from pathlib import Path
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
        self.process = subprocess.Popen(
            [program("splitnn-server"), "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=child_env(),
        )
        self.address = self._wait_bound(start_timeout)

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

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait for the graceful shutdown (SIGKILL if it hangs); the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("splitnn-server did not stop in %g s: killing it", timeout)
                self.process.kill()
                self.process.wait()
        return self.process.returncode

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
    completed = subprocess.run(
        [program(name), *args],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=child_env(env),
        check=False,
    )
    if completed.returncode == exits.ALARM:
        raise ChildAlarm(f"{name} stopped at its guard's alarm (exit status {exits.ALARM})")
    if completed.returncode != 0:
        raise ProcessError(f"{name} exited with status {completed.returncode}")
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
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
    code = subprocess.call([program(name), *args], stdout=log, stderr=log, env=child_env(env))
    if code != 0:
        raise ProcessError(f"{name} exited with status {code}")

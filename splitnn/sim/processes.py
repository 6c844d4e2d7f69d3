"""Starting the splitnn programs as separate OS processes and reading what they print."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class ProcessError(RuntimeError):
    """A party exited with an error; the message carries its last lines of stderr."""


def program(name: str) -> str:
    """The console script installed beside this interpreter (the same virtualenv)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise ProcessError(f"{name} is not installed next to {sys.executable}")
    return str(path)


class ServerProcess:
    """`splitnn-server` in the background; `address` is known once it has bound its port."""

    def __init__(self, args: list[str], *, start_timeout: float = 120.0) -> None:
        self.process = subprocess.Popen(
            [program("splitnn-server"), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=None,  # the server's log goes to our stderr
            text=True,
        )
        self.address = self._wait_bound(start_timeout)

    def _wait_bound(self, timeout: float) -> str:
        assert self.process.stdout is not None
        found: list[str] = []

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                if line.startswith("listening on "):
                    found.append(line.strip().removeprefix("listening on "))
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            self.stop()
            raise ProcessError("splitnn-server did not start (no 'listening on' line)")
        return found[0]

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the graceful shutdown; SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def run_json(name: str, args: list[str], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs a program with --json to completion; returns the JSON object it printed last."""
    completed = subprocess.run(
        [program(name), *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if completed.returncode != 0:
        raise ProcessError(f"{name} exited with status {completed.returncode}")
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise ProcessError(f"{name} printed no JSON result")
    result: dict[str, Any] = json.loads(lines[-1])
    return result

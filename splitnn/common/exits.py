"""Exit codes of every splitnn program and the one map from an exception to its code.

A domain exception says what kind of end it means by deriving from `Failed`, `BadUsage`,
`Unreachable` or `Alarm`; each program's entry point (`splitnn.programs`) turns whatever escapes
its command into one line on stderr and the code of `exit_code`. Exceptions of no kind are bugs:
they keep their traceback.
"""

from __future__ import annotations

import sys
from typing import NoReturn

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
ALARM = 4
INTERRUPTED = 130

MEANINGS: dict[int, str] = {
    OK: "success",
    FAILED: "the work failed (a training error, a refused request, a corrupt file)",
    USAGE: "bad usage: a flag, a value or a file the user must change",
    UNREACHABLE: "the server could not be reached in the time given (--connect-timeout)",
    ALARM: "a defence raised its alarm and the run stopped there, its state saved (--resume)",
    INTERRUPTED: "interrupted (Ctrl-C) before the work finished",
}


class Failed(Exception):
    """The work failed: exit 1."""


class BadUsage(Exception):
    """A request the user must change (a setting, a file, a decision): exit 2."""


class Unreachable(ConnectionError):
    """The peer did not answer within the time given to reach it: exit 3."""


class Alarm(Exception):
    """A defence of the data holder flagged the server and the run stopped there: exit 4."""


# Checked in order: the first class the exception is an instance of gives its code.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (KeyboardInterrupt, INTERRUPTED),
    (Alarm, ALARM),
    (Unreachable, UNREACHABLE),
    (BadUsage, USAGE),
    (Failed, FAILED),
    (OSError, FAILED),
)


def exit_code(error: BaseException) -> int | None:
    """The exit code `error` ends a program with; None: a bug, to be raised as it is."""
    for kind, code in EXIT_CODES:
        if isinstance(error, kind):
            return code
    return None


def describe(error: BaseException) -> str:
    """One line for the user: the message, or for a file error ``<file>: <reason>``."""
    if isinstance(error, KeyboardInterrupt):
        return str(error) or "interrupted"  # Ctrl-C's says nothing; SIGTERM's names itself
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error) or type(error).__name__


def fail(program: str, message: str, code: int) -> NoReturn:
    """Ends a command with one line on stderr, ``<program>: <message>``, and exit status `code`."""
    print(f"{program}: {message}", file=sys.stderr, flush=True)
    sys.exit(code)

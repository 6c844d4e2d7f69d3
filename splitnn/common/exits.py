"""Exit codes of every splitnn command, in one place.

0  success (also after a graceful SIGTERM/SIGINT shutdown of the server)
1  the work failed (a training error, a refused request, a corrupt file)
2  usage error: a bad flag or value (click's own code)
3  the peer could not be reached (server down, wrong address)
130 interrupted by the user before the work finished (data holder, attacker)
"""

from __future__ import annotations

import sys
from typing import NoReturn

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
INTERRUPTED = 130


def fail(program: str, message: str, code: int) -> NoReturn:
    """Ends a command with one line on stderr, ``<program>: <message>``, and exit status `code`."""
    print(f"{program}: {message}", file=sys.stderr, flush=True)
    sys.exit(code)

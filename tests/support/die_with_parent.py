"""Run a command that is sent SIGTERM when the process that started it dies.

``python -m tests.support.die_with_parent PARENT_PID COMMAND [ARGS...]`` asks
Linux for the signal (``PR_SET_PDEATHSIG``, kept across ``exec``), then becomes
the command. Worker processes under test run in a session of their own, so
that a test can kill their whole group; without this, a test run that is
itself killed (a timeout, an interrupted CI job) would leave them running,
taking the jobs of later runs. Elsewhere than Linux the command just runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    """Ask for SIGTERM on the parent's death, then exec ``argv[1:]``; ``argv[0]`` is the parent."""
    parent, command = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # it died before the signal was asked for
            sys.exit(f"the process that started {command[0]} has gone: not starting it")
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])

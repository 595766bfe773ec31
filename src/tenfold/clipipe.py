"""A reader of a command's output that went away (``tenfold status | head -1``, ``tenfold config show | true``).

The root command (:mod:`tenfold.cli`) ends any sub-command quietly with :data:`EXIT_READER_GONE` then, and the local
platform's commands (:mod:`tenfold.local.cli`) do so under their own handler of what the system refuses. Only stdout's
reader counts: a BrokenPipeError from anything else (a connection to a service, lost) is an error to report.
"""

from __future__ import annotations

import os
import sys

# How a command ends when the reader of its output went away: quietly, with the code a shell gives a command that
# SIGPIPE ended (128 + 13), as ``yes | head -1`` does. Not 0: the output was cut short, and a script under
# ``set -o pipefail`` that did not mean it to be hears so; not 1, the code of an outage or a refusal.
EXIT_READER_GONE = 141


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it: poll reports an error on a pipe's write end then. A
    BrokenPipeError from anything else (a connection to a service, lost) is not the user's ``| head``."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no real stdout (a test's runner), or no poll on this system
        return False


def drop_stdout() -> None:
    """Python's recipe for a reader that went away: what is left in stdout's buffer, and anything written after, goes
    nowhere, so no later write (nor the flush at exit) raises."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)

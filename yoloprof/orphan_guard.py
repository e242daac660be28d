"""`python -m yoloprof.orphan_guard CMD...`: exec CMD so that it is killed when its parent dies.

The scan can be SIGKILLed (by a user, a job scheduler, the OOM killer); nothing of a trial may
outlive it. Linux keeps PR_SET_PDEATHSIG across exec, so torchrun dies with the scan, and each
rank (which sets the same on itself) dies with torchrun; DataLoader workers watch their rank.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux; a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def main() -> None:
    die_with_parent()
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()

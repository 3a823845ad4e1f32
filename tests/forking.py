"""A child forked now, and what it answers: for the tests of what a forked child inherits."""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Callable


def answer_of_forked_child(work: Callable[[], bytes], timeout: float = 30.0) -> bytes:
    """What ``work()`` returns in a child forked now, or b"" where the child did not answer
    within ``timeout`` seconds (it hung, and is killed)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        signal.alarm(int(timeout) + 30)
        try:
            os.write(write, work())
        finally:
            os._exit(0)
    os.close(write)
    ready: list = []
    try:
        ready, _, _ = select.select([read], [], [], timeout)
        return os.read(read, 64) if ready else b""
    finally:
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read)

"""Tools around the library: the ``lateseq`` command line, the demo, the O2O simulator
and the Fat Row baseline they compare against. They need ``pip install 'lateseq[cli]'``
(the demo and the simulator also need pandas); ``import lateseq`` never loads them.
"""

from __future__ import annotations

import sys
from typing import Any


def main() -> None:
    """The ``lateseq`` console script."""
    try:
        from ._app import run
    except ImportError as exc:
        sys.exit(f"error: the lateseq command line needs its extra: pip install 'lateseq[cli]' ({exc})")
    except KeyboardInterrupt:  # while it loads: nothing started yet (the app reports later ones)
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    run()


def human_bytes(n: float) -> str:
    """A byte count as people read it (1,234 B, 12.3 MB)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def __getattr__(name: str) -> Any:
    if name == "app":  # the Typer application, for tests and for embedding
        from ._app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

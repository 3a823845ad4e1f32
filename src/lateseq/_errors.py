"""Every error lateseq raises.

Each error subclasses both ``LateseqError`` and the builtin it resembles, so callers
can catch either::

    LateseqError(Exception)
    ├── SchemaError(LateseqError, ValueError)        input does not fit the store's schema
    ├── StoreError(LateseqError, OSError)            the store directory is missing or unusable
    │   └── CommitConflict(StoreError)               another writer published that version first
    ├── VersionNotFound(LateseqError, LookupError)   no such version or tag
    ├── PointerError(LateseqError, ValueError)       a pointer cannot be resolved in this store
    └── ChecksumMismatch(LateseqError, ValueError)   a rebuilt sequence differs from what online saw
"""

from __future__ import annotations

import contextlib
import numbers
import os
import sys
import warnings
from collections.abc import Iterator, Sequence

import numpy as np


class LateseqError(Exception):
    """Root of every lateseq error."""


class SchemaError(LateseqError, ValueError):
    """Input events or a projection do not fit the store's schema."""


class StoreError(LateseqError, OSError):
    """The store location is missing, not a store, or cannot be written."""


class CommitConflict(StoreError):
    """Another writer published the version this commit meant to publish."""


class NotSynced(StoreError):
    """A version or tag was put in place (readers see it), but syncing its folder to disk
    failed: it may not survive a power loss. It is done: done again, a commit's events
    would be stored twice (a ``commit_id`` makes a retry safe)."""


class VersionNotFound(LateseqError, LookupError):
    """The requested version or tag does not exist (or is no longer kept)."""


class PointerError(LateseqError, ValueError):
    """A pointer refers to a version or user this store handle cannot serve."""


class ChecksumMismatch(LateseqError, ValueError):
    """Rebuilt sequences differ from the length or checksum recorded online. ``rows`` is
    empty where a DataLoader raised it again from a worker: torch hands over the message
    only (which names the first rows), and an error it cannot make of one became a plain
    RuntimeError that ``except lateseq.LateseqError`` missed."""

    def __init__(self, message: str, rows: list[int] | None = None, hint: str = ""):
        super().__init__(f"{message} {hint}".strip())
        self.rows = [] if rows is None else rows
        self.problem, self.hint = message, hint  # the CLI gives its own hint

    def __reduce__(self) -> tuple:  # pickled whole (a worker process raises it to its parent)
        return ChecksumMismatch, (self.problem, self.rows, self.hint)

    def in_log(self, log_rows: Sequence[int]) -> ChecksumMismatch:
        """The same mismatch, its rows renumbered: row ``i`` of the batch is ``log_rows[i]``
        of the example log it came from (readers that batch a log say where in it)."""
        return self.renumbered(log_rows, "first rows of the log")

    def renumbered(self, rows: Sequence[int], label: str = "first rows", total: int | None = None) -> ChecksumMismatch:
        """The same mismatch, row ``i`` of the batch it names being row ``rows[i]`` of
        the batch asked for (one rebuilt in parts, of ``total`` rows)."""
        mapped = [int(rows[r]) for r in self.rows]
        problem = self.problem.replace(f"(first rows: {self.rows[:5]})", f"({label}: {mapped[:5]})")
        if total is not None:  # "1 of 2 rebuilt histories" in a batch of 4 (s36G)
            problem = problem.replace(f" of {len(rows)} rebuilt histories", f" of {total} rebuilt histories", 1)
        return ChecksumMismatch(problem, mapped, self.hint)


class TransformOverflow(SchemaError):
    """A transform's result for one example does not fit its type. Says which example:
    in a log read batch by batch, its row in the log; in a tenant's read, the tenant."""

    def __init__(self, problem: str, row: int | None = None, where: str = "", tenant: str = ""):
        self.problem, self.row, self.tenant = problem, row, tenant  # problem: with a {where} to fill
        if row is None:  # a message only (a DataLoader raising it again from a worker, as ChecksumMismatch)
            self.where = where
            super().__init__(problem)
            return
        self.where = where or f"example {row}"
        super().__init__((f"tenant {tenant!r}: " if tenant else "") + "transforms: " + problem.format(where=self.where))

    def __reduce__(self) -> tuple:  # pickled whole (a worker process raises it to its parent)
        return TransformOverflow, (self.problem, self.row, self.where, self.tenant)

    def in_log(self, log_rows: Sequence[int]) -> TransformOverflow:
        if self.row is None:
            return self
        row = int(log_rows[self.row])
        return TransformOverflow(self.problem, row, f"row {row} of the example log", self.tenant)

    def of_tenant(self, tenant: str) -> TransformOverflow:
        return TransformOverflow(self.problem, self.row, self.where, tenant)


def is_integer(value: object) -> bool:
    """An integer, numpy's included (what configs and arrays hand over); not a bool, nor a
    whole float or a string, which would be a guess."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def exact_bool(name: str, value: object) -> bool:
    """``value`` as a bool where it is one (numpy's included); else a SchemaError naming
    ``name``: a string such as "no" or "False" is true to Python, and read as such it
    turned a flag on."""
    if not isinstance(value, bool | np.bool_):
        raise SchemaError(f"{name} must be True or False, not {value!r}")
    return bool(value)


def reading_checks(verify: object, on_mismatch: object) -> tuple[bool, str]:
    """``verify`` and ``on_mismatch`` checked: any ``on_mismatch`` but "raise" (a typo's
    "RAISE", "error", None) returned histories that failed their checksum, only flagged."""
    if not isinstance(on_mismatch, str) or on_mismatch not in ("raise", "flag"):
        raise SchemaError(f"on_mismatch must be 'raise' or 'flag', not {on_mismatch!r}")
    return exact_bool("verify", verify), on_mismatch


@contextlib.contextmanager
def rows_in_log(log_rows: Sequence[int]) -> Iterator[None]:
    """A ChecksumMismatch or TransformOverflow in a batch whose row ``i`` is row
    ``log_rows[i]`` of the example log names rows of the log, not of the batch (a user
    dropping the rows it names drops those that failed)."""
    try:
        yield
    except (ChecksumMismatch, TransformOverflow) as exc:
        raise exc.in_log(log_rows) from None


def exact_integer(name: str, value: object, low: int | None = None, high: int | None = None,
                  kind: str = "an integer") -> int:
    """``value`` as an int when ``is_integer`` and within [low, high]; else a SchemaError
    naming ``name`` and what it must be."""
    if not is_integer(value) or (low is not None and value < low) or (high is not None and value > high):
        if kind == "an integer" and high in (None, 2**63 - 1) and low in (0, 1):
            past = high is not None and is_integer(value) and value > high
            kind = ("a non-negative integer", "a positive integer")[low] + (" that fits int64" if past else "")
            low = high = None
        bounds = (f" from {low} to {high}" if low is not None and high is not None
                  else f" >= {low}" if low is not None else f" <= {high}" if high is not None else "")
        got = int(value) if is_integer(value) else f"{type(value).__name__} {value!r}"
        raise SchemaError(f"{name} must be {kind}{bounds}, got {got}")
    return int(value)


def warn_at_caller(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """Warns at the line of the first caller outside the library, however deep in it the
    cause was found (a read's copy held in memory is found in a segment's decode). The
    CLI is such a caller: past it, the warning was typer's, which the CLI printed in
    Python's form rather than as its own "warning: ..." line (s52D)."""
    frame, level = sys._getframe(1), 2
    while (frame is not None and frame.f_code.co_filename.startswith(_PACKAGE)
           and not frame.f_code.co_filename.startswith(_CLI)):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_CLI = os.path.join(_PACKAGE, "cli") + os.sep

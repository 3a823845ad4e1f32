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

from collections.abc import Sequence


class LateseqError(Exception):
    """Root of every lateseq error."""


class SchemaError(LateseqError, ValueError):
    """Input events or a projection do not fit the store's schema."""


class StoreError(LateseqError, OSError):
    """The store location is missing, not a store, or cannot be written."""


class CommitConflict(StoreError):
    """Another writer published the version this commit meant to publish."""


class VersionNotFound(LateseqError, LookupError):
    """The requested version or tag does not exist (or is no longer kept)."""


class PointerError(LateseqError, ValueError):
    """A pointer refers to a version or user this store handle cannot serve."""


class ChecksumMismatch(LateseqError, ValueError):
    """Rebuilt sequences differ from the length or checksum recorded online."""

    def __init__(self, message: str, rows: list[int]):
        super().__init__(message)
        self.rows = rows

    def in_log(self, log_rows: Sequence[int]) -> ChecksumMismatch:
        """The same mismatch, its rows renumbered: row ``i`` of the batch is ``log_rows[i]``
        of the example log it came from (readers that batch a log say where in it)."""
        rows = [int(log_rows[r]) for r in self.rows]
        message = str(self).replace(f"(first rows: {self.rows[:5]})", f"(first rows of the log: {rows[:5]})")
        return ChecksumMismatch(message, rows)

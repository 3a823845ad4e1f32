"""Projections: the slice of each history one model (tenant) reads."""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import SchemaError
from ._schema import Schema


@dataclass(frozen=True)
class Projection:
    """The newest ``max_len`` events before each request, with only the named columns.

    ``columns`` and ``feature_groups`` select payload columns (the time column may be
    named too); with neither, every payload column is read.
    """

    max_len: int
    columns: tuple[str, ...] = ()
    feature_groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.max_len, int) or isinstance(self.max_len, bool) or self.max_len < 1:
            raise SchemaError(f"max_len must be a positive integer, got {self.max_len!r}")
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "feature_groups", tuple(self.feature_groups))

    def resolve(self, schema: Schema) -> list[str]:
        """The stored column names to read, in a stable order, checked against ``schema``."""
        known = {schema.time_col, *schema.columns}
        unknown = [c for c in self.columns if c not in known]
        if unknown:
            raise SchemaError(f"projection names unknown columns {unknown}; the store has {sorted(known)}")
        groups = schema.groups
        missing = [g for g in self.feature_groups if g not in groups]
        if missing:
            raise SchemaError(f"projection names unknown feature groups {missing}; the store has {sorted(groups)}")
        wanted = list(self.columns)
        for g in self.feature_groups:
            wanted += groups[g]
        if not wanted:
            wanted = list(schema.columns)
        return list(dict.fromkeys(wanted))

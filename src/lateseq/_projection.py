"""Projections: the slice of each history one model (tenant) reads.

A projection selects on every dimension a model asks for, and the read path pushes each
one down: columns (only those are copied), length (only the newest part of a history),
a time window and an event filter (rows they drop are never copied).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ._errors import SchemaError, is_integer
from ._schema import Schema, ticks_per_second

TRANSFORMS = {
    "age": "request time minus event time, in the store's time unit (int64)",
    "age_s": "request time minus event time, in whole seconds (int64); needs a store with a time_unit",
}
_WINDOW = re.compile(r"^\s*([0-9]+)\s*(d|h|m|s|ms|us|ns)\s*$")  # ASCII digits: \d took '٣d' as 3 days (s45B)
_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_INTEGER_TYPES = ("int8", "int16", "int32", "int64", "bool")
_INT64 = (-(1 << 63), (1 << 63) - 1)


@dataclass(frozen=True)
class Filter:
    """Which events a projection keeps, by one integer (or bool) payload column:
    ``isin`` (its value is one of these), or ``any_bits`` / ``all_bits`` (a flags column
    has any / all of these bits set). Exactly one of the three is given."""

    column: str
    isin: tuple[int, ...] | None = None
    any_bits: int | None = None
    all_bits: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.column, str):
            raise SchemaError(f"where: column must be a column name, got {self.column!r}")
        given = [k for k in ("isin", "any_bits", "all_bits") if getattr(self, k) is not None]
        if len(given) != 1:
            raise SchemaError(f"where: a filter on {self.column!r} needs exactly one of isin, any_bits, all_bits; "
                              f"got {given or 'none'}")
        if self.isin is not None:
            listed = isinstance(self.isin, list | tuple | set | frozenset | range) or (
                isinstance(self.isin, np.ndarray) and self.isin.ndim == 1)
            values = tuple(self.isin) if listed else ()
            if not values or not all(is_integer(v) or isinstance(v, bool | np.bool_) for v in values):
                raise SchemaError(f"where: isin of the filter on {self.column!r} must be a non-empty list (tuple, "
                                  f"set, range or array) of integers (or bools, for a bool column), got {self.isin!r}")
            object.__setattr__(self, "isin", tuple(sorted({int(v) for v in values})))
            object.__setattr__(self, "_bools", any(isinstance(v, bool | np.bool_) for v in values))  # see problems
        for key in ("any_bits", "all_bits"):
            bits = getattr(self, key)
            # a negative int64 is its two's-complement bits: TOML's integers are int64, so bit 63 is
            # -9223372036854775808 there (0x8000000000000000 is past its range, s52A)
            if bits is not None and (not is_integer(bits) or not -(1 << 63) <= bits < 1 << 64 or bits == 0):
                raise SchemaError(f"where: {key} of the filter on {self.column!r} must be a mask of 1 to 64 bits "
                                  f"(a positive integer below 2**64, or a negative int64 for its two's-complement "
                                  f"bits: -9223372036854775808 is bit 63), got {bits!r}")
            if bits is not None:
                object.__setattr__(self, key, int(bits) & ((1 << 64) - 1))

    @property
    def mode(self) -> int:
        """0: isin, 1: any_bits, 2: all_bits (what the selection kernel branches on)."""
        return 0 if self.isin is not None else 1 if self.any_bits is not None else 2

    def __str__(self) -> str:
        if self.isin is not None:
            return f"{self.column} in {{{', '.join(map(str, self.isin))}}}"
        kind = "any" if self.any_bits is not None else "all"
        return f"{self.column} has {kind} of bits {self.kernel_values().view(np.uint64)[0]:#x}"

    def keeps(self, values: np.ndarray) -> np.ndarray:
        """Which of a column's ``values`` pass (as a bool array)."""
        wanted = self.kernel_values()
        if self.isin is not None:
            return np.isin(values, wanted)
        bits = values.astype(np.int64) & wanted[0]
        return bits != 0 if self.any_bits is not None else bits == wanted[0]

    def kernel_values(self) -> np.ndarray:
        """The values (isin) or mask as the kernel compares them with int64 column values:
        isin values no int64 holds are left out (they match nothing); a mask's 64 bits
        are those of the int64 with the same two's complement bits."""
        if self.isin is not None:
            return np.array([v for v in self.isin if _INT64[0] <= v <= _INT64[1]], np.int64)
        mask = self.any_bits if self.any_bits is not None else self.all_bits
        return np.array([mask], np.uint64).view(np.int64)


def _unknown_transforms(transforms: Mapping[str, str]) -> str:
    bad = {k: v for k, v in transforms.items() if v not in TRANSFORMS}
    return f"transforms: unknown {bad}; known: {sorted(TRANSFORMS)}" if bad else ""


@dataclass(frozen=True)
class Projection:
    """The newest ``max_len`` events before each request that a model reads.

    ``columns`` and ``feature_groups`` select payload columns (the time column may be
    named too); with neither, every payload column is read. ``window`` keeps only events
    at most that long before the request (an int in the store's time unit, a
    ``datetime.timedelta`` (pandas' Timedelta and numpy's timedelta64 too, to the
    nanosecond), or a string such as ``"90d"``, ``"12h"``, ``"30m"``,
    ``"45s"``); ``where`` keeps only events passing a :class:`Filter`. Both apply before
    the length: the result is the newest ``max_len`` events in the window that pass the
    filter. ``transforms`` maps an output column (the time column) to one of
    :data:`TRANSFORMS`, done as the sequence is copied out.

    The pointer's length and checksum always describe the whole visible history, so
    verification works for every projection at the same (nearly nil) cost.
    """

    max_len: int
    columns: tuple[str, ...] = ()
    feature_groups: tuple[str, ...] = ()
    window: int | dt.timedelta | str | None = None
    where: Filter | None = None
    transforms: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not is_integer(self.max_len) or not 1 <= self.max_len <= _INT64[1]:  # lengths and offsets are int64
            raise SchemaError(f"max_len must be an integer from 1 to 2**63 - 1, got {self.max_len!r}")
        object.__setattr__(self, "max_len", int(self.max_len))
        for name in ("columns", "feature_groups"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)):
                raise SchemaError(f"{name} must be a list of names, not the string {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.window is not None:
            object.__setattr__(self, "window", _exact_window(self.window))
            _window_parts(self.window)  # a malformed window fails here, not at the first read
            if is_integer(self.window):
                object.__setattr__(self, "window", int(self.window))
        if self.where is not None and not isinstance(self.where, Filter):
            raise SchemaError(f"where must be a lateseq.Filter, not {type(self.where).__name__}")
        if not isinstance(self.transforms, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.transforms.items()):
            raise SchemaError(f"transforms must map column names to transform names, got {self.transforms!r}")
        object.__setattr__(self, "transforms", dict(self.transforms))
        if unknown := _unknown_transforms(self.transforms):
            raise SchemaError(unknown)

    def __hash__(self) -> int:
        return hash((self.max_len, self.columns, self.feature_groups, self.window, self.where,
                     tuple(sorted(self.transforms.items()))))

    @property
    def selects(self) -> bool:
        """Whether rows are chosen by more than their recency (a window or a filter)."""
        return self.window is not None or self.where is not None

    def resolve(self, schema: Schema) -> list[str]:
        """The stored column names to read, in a stable order, checked against ``schema``
        (a SchemaError lists every problem)."""
        key = hash(self)  # fields (transforms is a dict) may change after a resolve
        cached = self.__dict__.get("_resolved")
        if cached is not None and cached[0] is schema and cached[1] == key:
            return list(cached[2])  # every batch of a loader resolves the same pair: check it once
        problems = self.problems(schema)
        if problems:
            raise SchemaError("; ".join(problems))
        wanted = self._wanted(schema)
        object.__setattr__(self, "_resolved", (schema, key, tuple(wanted)))
        return wanted

    def problems(self, schema: Schema) -> list[str]:
        """Every way this projection does not fit ``schema``, each naming its field."""
        problems = []
        known = {schema.time_col, *schema.columns}
        unknown = [c for c in self.columns if c not in known]
        if unknown:
            problems.append(f"columns: unknown columns {unknown}; the store has {sorted(known)}")
        groups = schema.groups
        missing = [g for g in self.feature_groups if g not in groups]
        if missing:
            problems.append(f"feature_groups: unknown feature groups {missing}; the store has {sorted(groups)}")
        wanted = self._wanted(schema)
        if unknown := _unknown_transforms(self.transforms):  # the dict may have changed since it was checked
            problems.append(unknown)
        for name, transform in self.transforms.items():
            if transform not in TRANSFORMS:
                continue
            if name != schema.time_col:
                problems.append(f"transforms: {transform!r} applies to the time column {schema.time_col!r}, "
                                f"not {name!r}")
            elif name not in wanted:
                problems.append(f"transforms: {transform!r} on {name!r}, which the projection does not read; "
                                "add it to columns")
            if transform == "age_s" and schema.time_unit is None:  # whichever column: told in the same run
                problems.append("transforms: 'age_s' needs a store with a time_unit; this one holds plain "
                                "integers: use 'age' (in the store's own unit)")
        if self.where is not None:
            dtype = schema.columns.get(self.where.column)
            if self.where.column == schema.time_col:  # a real column, which columns= takes (s45B)
                problems.append(f"where: filters select by a payload column; {self.where.column!r} is the time "
                                "column: bound it with window")
            elif dtype is None:
                problems.append(f"where: filter names unknown column {self.where.column!r}; the store's payload "
                                f"columns are {sorted(schema.columns)}")
            elif dtype not in _INTEGER_TYPES:
                problems.append(f"where: filter column {self.where.column!r} has type {dtype}; filters need an "
                                "integer or bool column")
            elif self.where.isin is not None and dtype != "bool" and self.where.__dict__.get("_bools"):
                problems.append(f"where: isin of the filter on {dtype} column {self.where.column!r} holds bools; "
                                "bools are for a bool column: give integers")
            elif self.where.isin is not None:
                low, high = (0, 1) if dtype == "bool" else (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
                if not any(low <= v <= high for v in self.where.isin):  # one that does may be for another store
                    problems.append(f"where: isin values {list(self.where.isin)} all lie outside [{low}, {high}], "
                                    f"the values of {dtype} column {self.where.column!r}: no event can match")
            else:
                key = "any_bits" if self.where.any_bits is not None else "all_bits"
                mask = getattr(self.where, key)
                width = 1 if dtype == "bool" else np.dtype(dtype).itemsize * 8
                # a negative mask that fits a signed column (-4 on int8) is its bits there: the kernel
                # compares sign-extended values, whose bits above the column's repeat its sign bit
                sign_extended = dtype != "bool" and mask >> (width - 1) == (1 << (65 - width)) - 1
                if mask >> width and not sign_extended:
                    problems.append(f"where: {key} mask {mask:#x} has bits beyond the {width} of {dtype} column "
                                    f"{self.where.column!r} (a negative mask must fit the column's type)")
        try:
            self.window_in(schema)
        except SchemaError as exc:
            problems.append(str(exc))
        return problems

    def _wanted(self, schema: Schema) -> list[str]:
        wanted = [c for c in self.columns if c == schema.time_col or c in schema.columns]
        groups = schema.groups
        for g in self.feature_groups:
            wanted += groups.get(g, [])
        if not wanted and not self.columns and not self.feature_groups:
            wanted = list(schema.columns)
        return list(dict.fromkeys(wanted))

    def window_in(self, schema: Schema) -> int | None:
        """The window as a count of the store's time unit (None: no window)."""
        if self.window is None:
            return None
        amount, unit = _window_parts(self.window)
        if unit is None:
            return amount
        if schema.time_unit is None:
            raise SchemaError(f"window {self.window!r} has a unit, but this store's times are plain integers "
                              "(no time_unit): give the window as an integer in the store's own unit")
        per_second = ticks_per_second(schema.time_unit)
        if unit in _SECONDS:
            return amount * _SECONDS[unit] * per_second
        ticks = amount * per_second // ticks_per_second(unit)
        if ticks * ticks_per_second(unit) != amount * per_second:
            raise SchemaError(f"window {self.window!r} is finer than the store's time unit {schema.time_unit!r}")
        return ticks


_NUMPY_UNITS = {"W": ("d", 7), "D": ("d", 1), "h": ("h", 1), "m": ("m", 1), "s": ("s", 1), "ms": ("ms", 1),
                "us": ("us", 1), "ns": ("ns", 1)}


def require_projection(projection: object, what: str = "projection must be") -> None:
    """SchemaError naming what was given where a Projection is needed: a bare
    AttributeError on ``resolve`` or ``selects`` said nothing of the argument (s61C)."""
    if not isinstance(projection, Projection):
        raise SchemaError(f"{what} a lateseq.Projection (e.g. lateseq.Projection(max_len=200)), not "
                          f"{type(projection).__name__} {projection!r:.80}")


def _exact_window(window: object) -> object:
    """numpy's timedelta64 and pandas' Timedelta as the window string they equal (numpy's
    counts as an integer, which would be read as store units, and pandas' is a
    ``datetime.timedelta`` whose nanoseconds that type drops); any other window as it is."""
    original = window
    if hasattr(window, "to_timedelta64"):  # pandas' Timedelta, without importing pandas
        window = window.to_timedelta64()
    if not isinstance(window, np.timedelta64):
        return original
    unit, count = np.datetime_data(window.dtype)
    if unit not in _NUMPY_UNITS or np.isnat(window):
        raise SchemaError(f"window {original!r} has no fixed length in seconds (numpy unit {unit!r}): give it "
                          "in weeks, days, hours, minutes, seconds or ms/us/ns")
    name, factor = _NUMPY_UNITS[unit]
    amount = int(window.astype(np.int64)) * count * factor
    if amount <= 0:
        raise SchemaError(f"window must be positive, got {original!r}")
    return f"{amount}{name}"


def _window_parts(window: int | dt.timedelta | str) -> tuple[int, str | None]:
    """(amount, unit) of a window; unit None: already in the store's unit."""
    if is_integer(window):
        if window < 1:
            raise SchemaError(f"window must be positive, got {window!r}")
        return int(window), None
    if isinstance(window, dt.timedelta):
        micros = (window.days * 86_400 + window.seconds) * 1_000_000 + window.microseconds
        if micros <= 0:
            raise SchemaError(f"window must be positive, got {window!r}")
        return micros, "us"
    if isinstance(window, str):
        match = _WINDOW.match(window)
        if match and int(match.group(1)) > 0:
            return int(match.group(1)), match.group(2)
    raise SchemaError(f"window must be a positive integer (store time units), a timedelta, or a string like "
                      f"'90d', '12h', '30m', '45s', '500ms'; got {window!r}")


"""The store's schema: which column is the user, which is event time, and the payload.

The schema is fixed when a store is created and written once to ``schema.json``;
every commit is checked against it so a version never holds data of another shape.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._errors import SchemaError, exact_integer, warn_at_caller

PAYLOAD_TYPES: dict[str, pa.DataType] = {
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
}
_TYPE_NAMES = {str(t): name for name, t in PAYLOAD_TYPES.items()}
_ABSTRACT_TYPES = (np.generic, np.number, np.integer, np.signedinteger, np.unsignedinteger, np.inexact, np.floating,
                   np.complexfloating, np.flexible, np.character)
DEFAULT_GROUP = "default"
TIME_UNITS = ("s", "ms", "us", "ns")  # Arrow's timestamp units, coarsest first
UNIT_WORDS = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}


_AFTER_YEAR_3000_S = 32_535_216_000  # 3001-01-01T00:00:00Z, in seconds since 1970


_YEARS_1990_TO_2100_S = (631_152_000, 4_102_444_800)  # 1990-01-01 and 2100-01-01, in seconds since 1970


def coarser_unit_of(oldest: int, newest: int, unit: str) -> str | None:
    """A unit coarser than ``unit`` in which times from ``oldest`` to ``newest`` all fall in
    1990-2100, where counted in ``unit`` they fall in the first weeks of 1970: times of
    that coarser unit, given as integers (seconds into a store in ms), or None."""
    for coarse in TIME_UNITS[:TIME_UNITS.index(unit)]:
        ticks = ticks_per_second(coarse)
        if _YEARS_1990_TO_2100_S[0] * ticks <= oldest and newest < _YEARS_1990_TO_2100_S[1] * ticks:
            return coarse
    return None


def ticks_per_second(unit: str) -> int:
    """How many of ``unit`` (one of ``TIME_UNITS``) make a second."""
    return 10 ** (3 * TIME_UNITS.index(unit))


def past_year_3000(time: int, unit: str) -> bool:
    """Whether ``time``, counted in ``unit`` since 1970, is after the year 3000: an integer
    time that is most likely a finer unit's (ms read as s), as no event or request is."""
    return time // ticks_per_second(unit) >= _AFTER_YEAR_3000_S


@dataclass(frozen=True)
class Schema:
    """Names the user and time columns and the typed payload columns.

    ``feature_groups`` names sets of payload columns a tenant can ask for by one name.
    ``tiebreak`` optionally names an integer payload column that orders events sharing
    a timestamp; without it, ties keep commit order, then row order within the commit.
    ``partitions`` splits users by hash into independently written and read parts.
    ``arrival_col`` names the int64 column holding when each event became readable
    online (the two-tier protocol bounds by it); ``event_id_col`` names an int64 event
    id, and a commit keeps one copy of events sharing (user, event id): the one delivered
    first (stored before, or earlier in the commit's input).

    ``time_unit`` ("s", "ms", "us" or "ns") says what the stored int64 times count, so
    timestamp-typed inputs (events, arrivals, request times) are converted to it
    exactly; integer inputs are taken to be in that unit already. ``None`` (stores made
    before units existed, or by choice) means plain integers of no stated unit, and
    timestamp-typed inputs are refused rather than guessed at.
    """

    columns: dict[str, str]
    user_col: str = "user_id"
    time_col: str = "ts"
    feature_groups: dict[str, list[str]] = field(default_factory=dict)
    tiebreak: str | None = None
    partitions: int = 1
    arrival_col: str | None = None
    event_id_col: str | None = None
    time_unit: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.columns, dict):
            raise SchemaError(f"columns must map names to types, e.g. {{'item_id': 'int64'}}; got {self.columns!r}")
        object.__setattr__(self, "columns", {name: _type_name(name, dtype) for name, dtype in self.columns.items()})
        for name in self.columns:
            if not isinstance(name, str):
                raise SchemaError(f"column names are strings, not {type(name).__name__} ({name!r})")
            if name.startswith("_"):
                raise SchemaError(f"column {name!r}: names starting with '_' are reserved")
        for role, name in (("user_col", self.user_col), ("time_col", self.time_col)):
            if not isinstance(name, str) or not name:  # accepted, every commit then failed (s61C)
                raise SchemaError(f"{role} must name a column (a non-empty string), not {name!r}")
        if self.user_col == self.time_col:
            raise SchemaError("user column and time column must differ")
        for reserved in (self.user_col, self.time_col):
            if reserved in self.columns:
                raise SchemaError(f"{reserved!r} is the user or time column, not a payload column")
        groups = self.feature_groups
        if not isinstance(groups, dict) or not all(isinstance(g, str) and isinstance(m, (list, tuple))
                                                   for g, m in groups.items()):  # a key 5 came back as "5", and a
            raise SchemaError(  # string's letters were named as its columns (s61C)
                f"feature_groups must map group names (strings) to lists of columns, e.g. {{'ids': ['item_id']}}; "
                f"got {groups!r:.80}")
        object.__setattr__(self, "feature_groups", {group: list(members) for group, members in groups.items()})
        for group, members in self.feature_groups.items():
            unknown = [m for m in members if m not in self.columns and m != self.time_col]
            if unknown:
                raise SchemaError(f"feature group {group!r} names unknown columns {unknown}")
        if self.tiebreak is not None and not self.columns.get(self.tiebreak, "").startswith("int"):
            raise SchemaError(f"tiebreak {self.tiebreak!r} must name an integer payload column")
        for role, name in (("arrival_col", self.arrival_col), ("event_id_col", self.event_id_col)):
            if name is not None and self.columns.get(name) != "int64":
                what = (f"it is {self.columns[name]}" if name in self.columns else "it is the user column"
                        if name == self.user_col else "it is the time column" if name == self.time_col
                        else "the schema has no such column")
                raise SchemaError(f"{role} {name!r} must name an int64 payload column: {what}")
        object.__setattr__(self, "partitions", exact_integer("partitions", self.partitions, 1, 65536))
        if self.time_unit is not None and self.time_unit not in TIME_UNITS:
            raise SchemaError(f"time_unit must be one of {', '.join(TIME_UNITS)} or None (plain integers), "
                              f"got {self.time_unit!r}")

    @property
    def groups(self) -> dict[str, list[str]]:
        """Feature groups, with every payload column in ``default`` when none are named."""
        return self.feature_groups or {DEFAULT_GROUP: list(self.columns)}

    @property
    def id_columns(self) -> list[str]:
        """The columns of ids: a hive folder key naming one must not spell an id two ways."""
        return [self.user_col, *([self.event_id_col] if self.event_id_col else [])]

    @classmethod
    def infer(
        cls, arrow_schema: pa.Schema | pa.Table | pa.RecordBatch, user_col: str = "user_id", time_col: str = "ts",
        **options: Any
    ) -> Schema:
        """Every column other than user and time becomes a payload column.

        A timestamp-typed time column gives the store its ``time_unit`` unless the
        options name one; an integer time column gives none (plain integers). A table
        stands for its schema (passing one was an AttributeError, s52B), and its values
        tell whether a uint64 column fits int64 (polars' and pandas' ids often come so).
        """
        table = arrow_schema if isinstance(arrow_schema, pa.Table | pa.RecordBatch) else None
        if table is not None:
            arrow_schema = table.schema
        if not isinstance(arrow_schema, pa.Schema):
            raise SchemaError(f"Schema.infer takes a pyarrow Schema (or a Table), not a {type(arrow_schema).__name__}"
                              + frame_hint(arrow_schema))
        names = arrow_schema.names
        for needed, what, option in ((user_col, "user ids", "user"), (time_col, "event times", "time")):
            if needed not in names:
                raise SchemaError(f"input has no column {needed!r} (columns: {names}): name the column of its "
                                  f"{what} ({option}_col=, or the CLI's --{option}-col)")
        time_type = _as_time(arrow_schema.field(time_col).type)
        if pa.types.is_timestamp(time_type):
            options.setdefault("time_unit", time_type.unit)
        columns, refused = {}, []
        for i, f in enumerate(arrow_schema):
            if f.name in (user_col, time_col):
                continue
            values = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
            # unsigned integers as the signed type that holds them all, float16 as float32 (a commit
            # casts them exactly)
            dtype = _TYPE_NAMES.get(str(values)) or _WIDENED.get(str(values))
            if values == pa.uint64() and table is not None and _fits_int64(table.column(i)):  # (a name twice, too)
                dtype = "int64"
            if dtype is None:
                refused.append(f"column {f.name!r} has type {f.type}{_payload_hint(values, table is not None)}")
            columns[f.name] = dtype
        for role in ("arrival_col", "event_id_col"):  # integers of any width, as int64 (a commit casts them exactly)
            if str(columns.get(options.get(role), "")).startswith("int"):
                columns[options[role]] = "int64"
        them = "it" if len(refused) == 1 else "them"
        problems = [f"{'; '.join(refused)}: a store cannot hold {them}; drop {them} (the CLI's ingest --drop "
                    f"{','.join(n for n, dtype in columns.items() if dtype is None)}) or cast to one of "
                    f"{', '.join(PAYLOAD_TYPES)}"] if refused else []
        user_type = arrow_schema.field(user_col).type
        user_values = user_type.value_type if pa.types.is_dictionary(user_type) else user_type
        if not pa.types.is_integer(user_values):
            hint = string_ids_hint(user_values)
            problems.append(f"user ids {user_col!r} have type {user_type}, expected int64{hint}")
        if not (pa.types.is_integer(time_type) or pa.types.is_timestamp(time_type)):
            problems.append(f"event times {time_col!r} have type {arrow_schema.field(time_col).type}; times must "
                            "be integers, timestamps or dates")
        try:  # what the schema itself refuses (a reserved name, an option), said with the rest
            schema = cls(columns={n: t for n, t in columns.items() if t}, user_col=user_col, time_col=time_col,
                         **options)
        except SchemaError as exc:
            problems.append(str(exc))
        if problems:  # every one at once: a Spark export's four columns took four runs to find (s51B)
            raise SchemaError(". ".join(problems))
        return schema

    def conform(self, table: pa.Table, *, empty: bool = False) -> pa.Table:
        """Check ``table`` against the schema and return it cast to the schema's types.

        Raises SchemaError naming the first problem; nothing is written before this passes.
        Floats going into a narrower float column are rounded to its nearest value; one
        that would become infinite, or zero from nonzero, is refused. ``empty``: a table
        of no events (a watermark's commit, a quiet hour's export) may name only some
        columns, each checked as an event's would be (a wrong type is a broken export).
        """
        if table.num_rows == 0 and not empty:
            raise SchemaError("no events to commit: the input is empty")
        expected = [name for name in self.check_columns(table, partial=empty) if name in table.column_names
                    and not (empty and pa.types.is_null(table.schema.field(name).type))]  # no values: none wrong
        targets = {self.user_col: pa.int64(), self.time_col: pa.int64()}
        targets.update({n: PAYLOAD_TYPES[t] for n, t in self.columns.items()})
        arrays = []
        for name in expected:
            col = table.column(name)
            if pa.types.is_dictionary(col.type):  # a categorical column: its values, exactly
                col = decoded(col, f"column {name!r}", name == self.user_col)
            if col.null_count:
                nan = (" (pa.Table.from_pandas makes nulls of pandas' NaN: to store NaN, fill them back with "
                       "pyarrow.compute.fill_null(column, float('nan')))" if pa.types.is_floating(col.type) else "")
                raise SchemaError(f"column {name!r} has {col.null_count} null values; lateseq stores none{nan}")
            if name in (self.time_col, self.arrival_col):
                col = self.times_to_store(col, f"column {name!r}")
            elif pa.types.is_timestamp(col.type):  # its unit would silently become the store's
                raise SchemaError(f"column {name!r} has type {col.type}; only the time and arrival columns are "
                                  "converted from timestamps: give it as integers (in a unit you choose)")
            target = targets[name]
            if not _castable(col.type, target):
                hint = (string_ids_hint if name == self.user_col else string_values_hint)(col.type)
                raise SchemaError(f"column {name!r} has type {col.type}, expected {target}{hint}")
            if pa.types.is_boolean(target) and pa.types.is_integer(col.type):
                bounds = pc.min_max(col).as_py()  # a cast would turn any nonzero into True
                if bounds["min"] is not None and (bounds["min"] < 0 or bounds["max"] > 1):
                    raise SchemaError(f"column {name!r} is bool but holds integers other than 0 and 1 "
                                      f"(from {bounds['min']} to {bounds['max']})")
            try:
                cast = pc.cast(col, target, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(f"column {name!r} does not fit {target}: {exc}"
                                  f"{unsigned_bits_hint(col.type, target, name == self.user_col)}") from exc
            if (pa.types.is_floating(col.type) and pa.types.is_floating(target)
                    and col.type.bit_width > target.bit_width):  # narrowed (wider is exact; Arrow has no
                # comparison of half floats, so checking float16 into float32 failed with Arrow's error)
                if pc.sum(pc.is_finite(cast)).as_py() != pc.sum(pc.is_finite(col)).as_py():
                    raise SchemaError(f"column {name!r} holds values too large for {target}")
                if pc.sum(pc.equal(cast, 0)).as_py() != pc.sum(pc.equal(col, 0)).as_py():
                    raise SchemaError(f"column {name!r} holds nonzero values too small for {target} "
                                      "(they would be stored as 0)")
            arrays.append(cast)
        return pa.table(arrays, names=expected)

    def check_columns(self, table: pa.Table, *, partial: bool = False) -> list[str]:
        """The schema's column names, in order, once ``table`` was checked to hold exactly
        those, or with ``partial`` some of them (SchemaError naming a duplicate, missing or
        unknown one)."""
        twice = sorted({c for c in table.column_names if table.column_names.count(c) > 1})
        if twice:
            raise SchemaError(f"input has columns {twice} more than once")
        expected = [self.user_col, self.time_col, *self.columns]
        missing = [c for c in expected if c not in table.column_names]
        if missing and not partial:
            raise SchemaError(f"input is missing columns {missing} (it has {table.column_names})")
        extra = [c for c in table.column_names if c not in expected]
        if extra:
            unnamed = [c for c in extra if re.fullmatch(r"__index_level_\d+__", c)]
            index = bool(unnamed)
            listed = (table.schema.pandas_metadata or {}).get("index_columns", [])
            named = [c for c in extra if c in listed and c not in unnamed]
            raise SchemaError(f"input has columns {extra} that the store's schema does not know" + (
                " (__index_level_N__ is a pandas DataFrame's index: pa.Table.from_pandas(df, preserve_index=False) "
                "leaves it out)" if index else "") + (
                f" ({', '.join(map(repr, named))}: a pandas DataFrame's named index, which pandas writes as a "
                "column; reset_index(drop=True) before writing, or to_parquet(index=False), leaves it out)"
                if named else ""))
        return expected

    def refuse_far_future(self, times: np.ndarray, what: str,
                          why: str = "The tier would refuse every event arriving before it, for good") -> None:
        """SchemaError for a time after the year 3000 in the store's unit: one in a finer unit
        (ms for a store in s). A request, an arrival or a fold's watermark so stamped is for
        good: the tier then refused every event arriving before it, for every user (s36E,
        s36G). Plain integer times (no ``time_unit``) cannot be told so."""
        if self.time_unit is None or not len(times):
            return
        newest = int(np.max(times))
        if past_year_3000(newest, self.time_unit):
            raise SchemaError(f"{what} {newest} is after the year 3000 in the store's time unit ({self.time_unit}): "
                              f"a time in a finer unit? {why}")

    def times_to_store(self, times: pa.Array | pa.ChunkedArray, what: str,
                       requests: bool = False) -> pa.Array | pa.ChunkedArray:
        """``times`` as int64 counts of the store's ``time_unit``, converted exactly.

        The one place event, arrival and request times meet the store's unit, so a
        ``timestamp[ms]`` request is never compared with microseconds. Timestamps are
        converted from their own unit (zoned ones too: Arrow holds them as UTC);
        integers are taken as already in the store's unit. Raises SchemaError, naming
        ``what``, for a timestamp into a store of plain integers, a conversion that
        would drop precision or overflow int64, or any other type. Nulls pass through.
        ``requests``: the times are requests', whose exact whole-unit form is rounded up.
        """
        given = times.type  # a date is named as such, not as the timestamp it is read as
        if _as_time(times.type) != times.type:
            times = pc.cast(times, _as_time(times.type))
        source = times.type
        if pa.types.is_integer(source):
            try:
                times = pc.cast(times, pa.int64(), safe=True)
            except pa.ArrowInvalid as exc:
                raise SchemaError(f"{what} has type {source} with values that do not fit int64: {exc}") from exc
            bounds = pc.min_max(times).as_py() if self.time_unit is not None and len(times) else {}
            oldest, newest = bounds.get("min"), bounds.get("max")  # (one pass for both checks)
            if newest is not None and past_year_3000(newest, self.time_unit):
                # ms into a store in s was stored as the year 57,970, and a request so stamped saw
                # every event (s47A); the two-tier path refused it, commit and pointers did not
                raise SchemaError(f"{what} holds {newest}, after the year 3000 counted in the store's unit "
                                  f"({UNIT_WORDS[self.time_unit]}): integer times count the store's unit as they "
                                  "are, and these look like a finer unit's: convert them, or give timestamps "
                                  "(converted from their own unit; a request meant to come after every event too)")
            if newest is not None and (coarse := coarser_unit_of(oldest, newest, self.time_unit)):
                # the mirror image: seconds into a store in ms were stored as January 1970, silently (s50A);
                # the same words each time (no values), so that a serving loop is told once per line (s50B)
                warn_at_caller(f"{what}: every integer time falls in the first weeks of 1970 counted in the store's "
                               f"unit ({UNIT_WORDS[self.time_unit]}), and in 1990-2100 counted in "
                               f"{UNIT_WORDS[coarse]}. Integer times count the store's unit as they are: if these "
                               f"count {UNIT_WORDS[coarse]}, convert them (times * "
                               f"{ticks_per_second(self.time_unit) // ticks_per_second(coarse)}) or give timestamps",
                               UserWarning)
            return times
        if not pa.types.is_timestamp(source):
            raise SchemaError(f"{what} has type {source}; times must be integers, timestamps or dates")
        if self.time_unit is None:
            raise SchemaError(
                f"{what} has type {given}, but the store holds plain integer times (its schema has no "
                f"time_unit), so lateseq cannot tell which unit they count: cast the column to int64 in the "
                f"store's time scale yourself, or create the store with a time_unit "
                f"(Schema(time_unit={source.unit!r}), or `lateseq ingest --time-unit {source.unit}`)")
        raw = pc.cast(times, pa.int64())
        shift = 3 * (TIME_UNITS.index(self.time_unit) - TIME_UNITS.index(source.unit))
        unit = UNIT_WORDS[self.time_unit]
        if shift > 0:
            factor = 10 ** shift
            limit = np.iinfo(np.int64).max // factor  # the same bound both ways: 10**k never divides 2**63
            overflow = pc.sum(pc.or_(pc.greater(raw, limit), pc.less(raw, -limit))).as_py() or 0
            if overflow:
                raise SchemaError(
                    f"{what} has type {given}: {overflow} of {len(times)} values overflow int64 when converted "
                    f"to the store's timestamp[{self.time_unit}] (int64 {unit} reach only ±{limit} {source.unit})")
            return pc.multiply(raw, factor)
        if shift < 0:
            divisor = 10 ** -shift
            whole = pc.divide(raw, divisor)  # truncates; exact where the remainder is zero
            lossy = pc.sum(pc.not_equal(pc.multiply(whole, divisor), raw)).as_py() or 0
            if lossy:
                raise SchemaError(
                    f"{what} has type {given} but the store's times are timestamp[{self.time_unit}]: "
                    f"{lossy} of {len(times)} values are not whole {unit} and would lose precision; "
                    + (f"round them up first (pyarrow.compute.ceil_temporal(times, unit={unit[:-1]!r})): a history "
                       f"holds events strictly before its request, so an event of the request's own {unit[:-1]} is in "
                       "it, and rounding down or to the nearest leaves it out" if requests else "round them first")
                    + ", or use a store with a finer time_unit")
            return whole
        return raw

    def empty_table(self) -> pa.Table:
        """A table with no rows and exactly the conformed columns."""
        fields = [(self.user_col, pa.int64()), (self.time_col, pa.int64())]
        fields += [(n, PAYLOAD_TYPES[t]) for n, t in self.columns.items()]
        return pa.schema(fields).empty_table()

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": 1,
                "user_col": self.user_col,
                "time_col": self.time_col,
                "columns": self.columns,
                "feature_groups": self.feature_groups,
                "tiebreak": self.tiebreak,
                "partitions": self.partitions,
                "arrival_col": self.arrival_col,
                "event_id_col": self.event_id_col,
                "time_unit": self.time_unit,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> Schema:
        """Older schema.json files have no ``time_unit``: they load as plain integer times.
        Some held the store's id, now a file of its own (``id``): such a store opened with
        a bare TypeError (s36H); its id is left there, unread (the store is one without)."""
        data = json.loads(text)
        data.pop("format", None)
        data.pop("store_id", None)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:  # a field a newer lateseq added, whose meaning this one cannot honour
            raise SchemaError(f"schema.json has fields this lateseq does not know ({', '.join(unknown)}): a newer "
                              "lateseq wrote it; upgrade lateseq to read this store")
        return cls(**data)


def _as_time(type_: pa.DataType) -> pa.DataType:
    """The type a time column of ``type_`` is read as, exactly: a categorical one's values,
    a date as a timestamp (whole days are whole seconds; date64 counts ms)."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if pa.types.is_date32(type_):
        return pa.timestamp("s")
    return pa.timestamp("ms") if pa.types.is_date64(type_) else type_


# types no column has, as the one a commit casts them into exactly (an existing store took
# them while a new one refused them: s51A's uint32, s52B's float16)
_WIDENED = {"uint8": "int16", "uint16": "int32", "uint32": "int64", "halffloat": "float32"}


def _fits_int64(column: pa.Array | pa.ChunkedArray) -> bool:
    """Whether every value of a uint64 column (or one of uint64 categories) is below 2**63."""
    if pa.types.is_dictionary(column.type):
        column = column.combine_chunks().dictionary if isinstance(column, pa.ChunkedArray) else column.dictionary
    largest = pc.max(column).as_py()
    return largest is None or largest < 2**63


def _payload_hint(type_: pa.DataType, looked: bool) -> str:
    """What to do with a payload column of ``type_`` that a store cannot hold, beyond a cast
    (``looked``: its values were seen, one past 2**63 for a uint64 column)."""
    if pa.types.is_temporal(type_):
        return " (times other than the event's are stored as integers: cast to an integer count of a unit you choose)"
    if type_ == pa.uint64() and not looked:
        return (" (values below 2**63 go into an int64 column exactly: name it int64 in the Schema, or give "
                "Schema.infer the table itself, which looks at them; "
                + unsigned_bits_hint(type_, pa.int64(), False)[2:])
    return string_values_hint(type_) or unsigned_bits_hint(type_, pa.int64(), False)


def _is_text(type_: pa.DataType) -> bool:
    return any(check(type_) for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view,
                                          pa.types.is_binary, pa.types.is_large_binary))


def string_values_hint(type_: pa.DataType) -> str:
    """What to do with a payload column of ``type_``, for an error refusing it: how to map
    strings to integer ids where they are strings (or bytes), else nothing."""
    if not _is_text(type_):
        return ""
    return (" (lateseq stores numbers: map the strings to integer ids with a vocabulary you keep, the same "
            "for every commit, e.g. pyarrow.compute.index_in(column, value_set=vocabulary))")


def string_ids_hint(type_: pa.DataType) -> str:
    """What to do with user ids of ``type_``, for an error refusing them: how to map string
    ids to int64 where they are strings (or bytes), else nothing."""
    if not _is_text(type_):
        return ""
    return (" (lateseq keys users by int64: map string ids to integers the same way for events and requests, "
            "with a table of ids you keep, or a 64-bit hash such as "
            "pandas.util.hash_array(numpy.asarray(ids, dtype=object)).view('int64') (at a billion users two of them "
            "collide with a chance of about 3%, and share one history))")


def decoded(column: pa.Array | pa.ChunkedArray, what: str, ids: bool = False) -> pa.Array | pa.ChunkedArray:
    """A categorical (dictionary) column as its values, exactly. SchemaError, naming
    ``what``, where Arrow cannot decode them (polars' categories of string_view): lateseq
    stores numbers, so such a column is refused either way."""
    try:
        return column.cast(column.type.value_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        kind = "user ids" if ids else "values"
        raise SchemaError(f"{what} is categorical, of {column.type.value_type}: lateseq takes integer {kind}"
                          f"{string_ids_hint(column.type.value_type) if ids else ''}") from exc


def frame_hint(value: Any) -> str:
    """How to make the Arrow table lateseq takes of ``value``, exactly, where it is a
    DataFrame (for an error refusing it), else nothing."""
    if isinstance(value, pa.RecordBatchReader):  # Store.commit takes one; log_examples and materialize a Table (s52B)
        return " (reader.read_all() reads it into a Table)"
    if not hasattr(value, "columns"):
        return ""
    if isinstance(value, pa.RecordBatch):  # (it has columns too: it was told how to convert a DataFrame, s47E)
        return " (pa.Table.from_batches([batch]) makes a Table of a RecordBatch)"
    if type(value).__module__.split(".")[0] == "pandas":
        return (" (pa.Table.from_pandas(df, preserve_index=False) converts a pandas DataFrame (it turns NaN into "
                "null: fill float columns back with pyarrow.compute.fill_null(column, float('nan'))))")
    return " (pa.table(df) converts a DataFrame that exports Arrow (polars, DuckDB, ...) exactly)"


def as_user_ids(values: Any, what: str) -> np.ndarray:
    """``values`` as int64 user ids. Raises SchemaError, naming ``what``, unless every
    one is an integer that fits: a float, a string or a wrapped uint64 names another user."""
    if isinstance(values, pa.Table | pa.RecordBatch) or hasattr(values, "columns"):  # a table or a DataFrame
        raise SchemaError(f"{what} must be a list or array of user ids, not a {type(values).__name__}: "
                          "pass its id column (e.g. table.column('user_id'))")
    try:
        array = _arrow_ids(values, what)
    except SchemaError:
        raise
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        past = isinstance(values, list | tuple) and any(isinstance(v, int) and v >= 2**63 for v in values)
        raise SchemaError(f"{what} must be integer user ids: {exc}"
                          f"{unsigned_bits_hint(pa.uint64(), pa.int64(), True) if past else ''}") from exc
    if len(array) == 0:
        return np.empty(0, np.int64)
    if pa.types.is_dictionary(array.type):  # a categorical column of ids
        array = decoded(array, what, ids=True)
    if not pa.types.is_integer(array.type):
        raise SchemaError(f"{what} must be integer user ids, not {array.type}{string_ids_hint(array.type)}")
    if array.null_count:
        raise SchemaError(f"{what} has {array.null_count} null values")
    try:
        return pc.cast(array, pa.int64(), safe=True).to_numpy()
    except pa.ArrowInvalid as exc:
        raise SchemaError(f"{what} holds ids that do not fit int64: {exc}"
                          f"{unsigned_bits_hint(array.type, pa.int64(), True)}") from exc


def unsigned_bits_hint(given: pa.DataType, target: pa.DataType, ids: bool) -> str:
    """How to keep 64-bit unsigned values (hashed ids, common in recommendation logs) that
    int64 cannot hold: their bits, which name them as well."""
    if not (given == pa.uint64() and target == pa.int64()):
        return ""
    where = "in the events and the requests alike, so that each id names one user" if ids else (
        "wherever they are compared")
    return (" (hashed 64-bit ids past 2**63: keep their bits as int64, pyarrow.compute.cast(values, pa.int64(), "
            f"safe=False) or numpy's values.view(np.int64), {where})")


def exported_arrow(values: Any) -> pa.Array | pa.ChunkedArray | None:
    """``values`` as the Arrow it exports (the Arrow PyCapsule interface: a polars Series,
    a nanoarrow or DuckDB array), exactly; None where it exports none. ``pa.array`` reads
    such an object through numpy or Python objects: polars' nanosecond times came back in
    microseconds, and its nulls as NaN (ids refused as floats). Not pandas objects: their
    export (pandas 3) reads a column of Timestamp objects to the microsecond too."""
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values
    if type(values).__module__.split(".")[0] == "pandas":
        return None
    try:
        if hasattr(values, "__arrow_c_stream__"):
            return pa.chunked_array(values)
        if hasattr(values, "__arrow_c_array__"):
            return pa.array(values)
    except (TypeError, pa.ArrowNotImplementedError):  # an export this pyarrow cannot import: read as before
        pass
    return None


def _arrow_ids(values: Any, what: str) -> pa.Array | pa.ChunkedArray:
    """``values`` as Arrow: what exports Arrow as it is, lists and pandas objects as Arrow
    reads them (their nulls stay nulls), anything else through numpy (tensors, scalars,
    byte-swapped arrays)."""
    exported = exported_arrow(values)
    if exported is not None:
        return exported
    if isinstance(values, list | tuple | range) or type(values).__module__.split(".")[0] == "pandas":
        return pa.array(values)
    raw = np.atleast_1d(np.asarray(values))
    if raw.ndim != 1:
        raise SchemaError(f"{what} must be one-dimensional, not of shape {raw.shape}")
    return pa.array(raw if raw.dtype.isnative else raw.astype(raw.dtype.newbyteorder("=")))


def _type_name(column: str, dtype: Any) -> str:
    """A payload column's type as its name in ``PAYLOAD_TYPES``, from the name or the
    pyarrow or numpy type a user writes (``pa.int64() == "int64"`` holds, so a DataType
    passed a check by name and then failed to be written as JSON)."""
    if isinstance(dtype, str) and dtype in PAYLOAD_TYPES:
        return dtype
    if isinstance(dtype, pa.DataType):
        name = next((n for n, t in PAYLOAD_TYPES.items() if t == dtype), None)
    elif isinstance(dtype, np.dtype) or (isinstance(dtype, type) and issubclass(dtype, np.generic)):
        # an abstract one (np.integer) has no type of its own: numpy 1.x took it for a default one
        name = None if dtype in _ABSTRACT_TYPES else np.dtype(dtype).name
    else:
        name = None
    if name not in PAYLOAD_TYPES:
        raise SchemaError(f"column {column!r} has type {dtype!r}; supported payload types are "
                          f"{', '.join(PAYLOAD_TYPES)}")
    return name


def _castable(source: pa.DataType, target: pa.DataType) -> bool:
    """Numbers cast between numeric types (safely, checked per value); nothing else does."""
    if pa.types.is_boolean(target):
        return pa.types.is_boolean(source) or pa.types.is_integer(source)
    if pa.types.is_integer(target):
        return pa.types.is_integer(source)
    return pa.types.is_integer(source) or pa.types.is_floating(source)

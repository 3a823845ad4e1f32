"""Time units: a store records what its int64 times count, and every timestamp-typed
input (event times, arrival times, request times) is converted to it exactly, or refused.

Expected values are computed independently: with Python integers (exact at any size)
and with pandas, which knows calendars, time zones and dates before 1970.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import ArrowExporter
from hypothesis import given, settings
from hypothesis import strategies as st

import lateseq
from lateseq import PointerError, Schema, SchemaError
from lateseq._pointers import pointers_from_log
from lateseq.mutable import InMemoryTier
from lateseq.twotier import OnlineReader, fold
from tests.test_cli_outputs import cli, one_line_error

UNITS = ["s", "ms", "us", "ns"]
PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
WORDS = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
AFTER_YEAR_3000_S = int(dt.datetime(3001, 1, 1, tzinfo=dt.UTC).timestamp())
# a request after every event, in a store of microseconds: a timestamp (an integer past the
# year 3000 is refused as a finer unit's)
LATER = pa.array([2**62], pa.timestamp("us"))
INT64 = (-(2**63), 2**63 - 1)
PROJECTION = lateseq.Projection(100, ("item", "ts"))


def events(ts: pa.Array, users: list[int] | None = None) -> pa.Table:
    users = users if users is not None else [1] * len(ts)
    return pa.table({"user_id": pa.array(users, pa.int64()), "ts": ts,
                     "item": pa.array(np.arange(len(ts)), pa.int64())})


def expected_conversion(values: list[int], source: str, target: str) -> list[int] | str:
    """Python-integer arithmetic: the converted values, or "overflow" / "precision"."""
    if PER_SECOND[target] >= PER_SECOND[source]:
        out = [v * (PER_SECOND[target] // PER_SECOND[source]) for v in values]
        return out if all(INT64[0] <= v <= INT64[1] for v in out) else "overflow"
    divisor = PER_SECOND[source] // PER_SECOND[target]
    return [v // divisor for v in values] if all(v % divisor == 0 for v in values) else "precision"


def history(store: lateseq.Store, user: int, request: pa.Array) -> list[int]:
    """The event times a request at ``request`` sees, in the store's unit."""
    log = lateseq.log_examples(store, pa.table({"user_id": [user], "request_ts": request}))
    return lateseq.materialize(store, log, PROJECTION).values["ts"].tolist()


# ---------------------------------------------------------------- the schema


def test_time_unit_is_validated_and_persisted(tmp_path):
    with pytest.raises(SchemaError, match="time_unit must be one of s, ms, us, ns"):
        Schema({"item": "int64"}, time_unit="seconds")
    for unit in [*UNITS, None]:
        schema = Schema({"item": "int64"}, time_unit=unit)
        assert Schema.from_json(schema.to_json()) == schema
        store = lateseq.create(tmp_path / f"store-{unit}", schema)
        assert json.loads((store.path / "schema.json").read_text())["time_unit"] == unit
        assert lateseq.open(store.path).schema.time_unit == unit


def test_schema_json_without_time_unit_loads_as_plain_integers(tmp_path, dir_snapshot):
    """A store made before units existed: its schema.json has no time_unit key."""
    text = json.loads(Schema({"item": "int64"}).to_json())
    del text["time_unit"]
    assert Schema.from_json(json.dumps(text)).time_unit is None

    store = lateseq.create(tmp_path / "old", Schema({"item": "int64"}))
    path = store.path / "schema.json"
    data = json.loads(path.read_text())
    del data["time_unit"]
    if "crc32" in data:  # the store checksums its JSON files: re-sign the edited one
        from lateseq._versions import dump_checked
        path.write_bytes(dump_checked(data))
    else:
        path.write_text(json.dumps(data))
    store = lateseq.open(store.path)
    assert store.schema.time_unit is None
    store = store.commit(events(pa.array([5, 7], pa.int64())))  # plain integers, as always
    assert history(store, 1, pa.array([7], pa.int64())) == [5]
    before = dir_snapshot(store.path)
    with pytest.raises(SchemaError, match="plain integer") as err:
        store.commit(events(pa.array([5], pa.timestamp("us"))))
    assert "int64" in str(err.value) and "time_unit" in str(err.value)
    with pytest.raises(SchemaError, match="plain integer"):
        lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": pa.array([9], pa.timestamp("s"))}))
    assert dir_snapshot(store.path) == before


@pytest.mark.parametrize("field_type, unit", [
    (pa.timestamp("ms"), "ms"), (pa.timestamp("ns", tz="Asia/Tokyo"), "ns"), (pa.int64(), None),
    (pa.int32(), None),
])
def test_infer_takes_the_unit_from_a_timestamp_column(field_type, unit):
    arrow = pa.schema([("user_id", pa.int64()), ("ts", field_type), ("item", pa.int64())])
    assert Schema.infer(arrow).time_unit == unit
    assert Schema.infer(arrow, time_unit="s").time_unit == "s"  # an explicit unit wins


def test_infer_names_every_column_it_cannot_store_at_once_and_widens_unsigned_ones(tmp_path):
    """A Spark export's uint32, dictionary-string and date32 columns and string user ids were
    refused one a run (four runs to find them), the categorical one told to be cast to an
    integer; a uint32 column that an existing store took exactly could not make one (s51A)."""
    arrow = pa.schema([("user_id", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("clicks", pa.uint8()),
                       ("views", pa.uint16()), ("creator", pa.uint32()), ("surface", pa.dictionary(pa.int32(),
                                                                                                  pa.string())),
                       ("day", pa.date32()), ("hashed", pa.uint64()), ("price", pa.float32())])
    with pytest.raises(SchemaError) as err:
        Schema.infer(arrow)
    message = str(err.value)
    for part in ("column 'surface' has type dictionary", "index_in", "column 'day' has type date32",
                 "integer count of a unit", "column 'hashed' has type uint64", "safe=False",
                 "--drop surface,day,hashed", "user ids 'user_id' have type string", "hash_array"):
        assert part in message, (part, message)
    assert "'creator'" not in message and "'clicks'" not in message
    # the time column's type, float ids and what the schema itself refuses, in the same message (s51B)
    with pytest.raises(SchemaError) as err:
        Schema.infer(pa.schema([("user_id", pa.float64()), ("ts", pa.string()), ("_x", pa.int64()),
                                ("y", pa.string())]))
    for part in ("user ids 'user_id' have type double, expected int64", "event times 'ts' have type string",
                 "column '_x': names starting with '_' are reserved", "column 'y' has type string"):
        assert part in str(err.value), (part, str(err.value))
    schema = Schema.infer(pa.schema([f for f in arrow if f.name not in ("surface", "day", "hashed", "user_id")]
                                    + [pa.field("user_id", pa.int64())]))
    assert schema.columns == {"clicks": "int16", "views": "int32", "creator": "int64", "price": "float32"}
    events = pa.table({"user_id": [1, 1], "ts": pa.array([1, 2], pa.timestamp("us", tz="UTC")),
                       "clicks": pa.array([255, 0], pa.uint8()), "views": pa.array([65535, 1], pa.uint16()),
                       "creator": pa.array([2**32 - 1, 7], pa.uint32()), "price": pa.array([1.5, 2], pa.float32())})
    store = lateseq.create(tmp_path / "s", schema).commit(events)
    got = lateseq.materialize(store, lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [3]})),
                              lateseq.Projection(5))
    assert got.values["creator"].tolist() == [2**32 - 1, 7] and got.values["clicks"].tolist() == [255, 0]
    assert got.values["views"].tolist() == [65535, 1]


def test_infer_takes_a_table_and_float16_which_a_commit_stores_exactly(tmp_path):
    """A table passed for its schema was an AttributeError; a float16 column a commit stores
    exactly as float32 was refused by a new store (s52B)."""
    halves = pa.array(np.array([1.5, -0.0, np.inf, np.nan, 6e-8], np.float16))
    events = pa.table({"user_id": [1] * 5, "ts": [1, 2, 3, 4, 5], "half": halves})
    schema = Schema.infer(events)
    assert schema.columns == {"half": "float32"} and Schema.infer(events.to_batches()[0]) == schema
    store = lateseq.create(tmp_path / "s", schema).commit(events)
    got = lateseq.materialize(store, lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [9]})),
                              lateseq.Projection(5)).values["half"]
    assert got.tobytes() == halves.to_numpy(zero_copy_only=False).astype(np.float32).tobytes()
    with pytest.raises(SchemaError, match="Schema.infer takes a pyarrow Schema .or a Table., not a DataFrame"):
        Schema.infer(events.to_pandas())
    reader = pa.RecordBatchReader.from_batches(events.schema, events.to_batches())
    with pytest.raises(SchemaError, match=r"not a RecordBatchReader \(reader.read_all\(\) reads it into a Table\)"):
        lateseq.log_examples(store, reader)


@pytest.mark.parametrize("categorical", [False, True])
def test_infer_given_a_table_takes_its_uint64_ids_that_fit_int64_and_event_ids_of_any_width(tmp_path, categorical):
    """polars' and pandas' uint64 item ids, all below 2**63, were refused by a new store
    (the CLI's too) with a hint about ids past 2**63, while a store named int64 took them
    exactly; an int32 event id column was refused as no payload column (s62K)."""
    items = pa.array([5, 2**63 - 1, 0], pa.uint64())
    events = pa.table({"user_id": [1, 1, 2], "ts": [1, 2, 3], "item": items.dictionary_encode() if categorical
                       else items, "eid": pa.array([1, 2, 3], pa.int32())})
    schema = Schema.infer(events, event_id_col="eid")
    assert schema.columns == {"item": "int64", "eid": "int64"}
    store = lateseq.create(tmp_path / "s", schema).commit(events)
    got = lateseq.materialize(store, lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [9]})),
                              lateseq.Projection(5, ("item",)))
    assert got.values["item"].tolist() == [5, 2**63 - 1]
    past = events.set_column(2, "item", pa.array([5, 2**63, 0], pa.uint64()))
    with pytest.raises(SchemaError, match="column 'item' has type uint64 .hashed 64-bit ids past 2..63"):
        Schema.infer(past)
    with pytest.raises(SchemaError, match="values below 2..63 go into an int64 column exactly"):
        Schema.infer(past.schema)
    with pytest.raises(SchemaError, match="event_id_col 'eid' must name an int64 payload column: it is int32"):
        Schema({"eid": "int32"}, event_id_col="eid")


def test_a_log_whose_request_times_were_rewritten_in_a_coarser_unit_is_named_so(tmp_path):
    """A log's request_ts rewritten as Spark's unix_millis against a store in us failed its
    checksums with every cause but that one named (s51A)."""
    store = lateseq.create(tmp_path / "s", Schema({"item": "int64"}, time_unit="us"))
    day = 1_764_547_200_000_000  # 2025-12-01 in us
    store = store.commit(pa.table({"user_id": [1, 1, 2], "ts": [day, day + 10**6, day], "item": [1, 2, 3]}))
    log = lateseq.log_examples(store, pa.table({"user_id": [1, 2], "request_ts": [day + 2 * 10**6, day + 10**6]}))
    millis = log.set_column(1, "request_ts", pc.divide(log["request_ts"], 1000))
    with pytest.raises(lateseq.ChecksumMismatch, match=r"fall in 1970's first weeks counted in the store's unit "
                       r"\(microseconds\) and in 1990-2100 counted in milliseconds: .*\(request_ts \* 1000\)"):
        lateseq.materialize(store, millis, lateseq.Projection(5))
    moved = log.set_column(1, "request_ts", pc.add(log["request_ts"], -1_500_000))  # not a unit: not said
    with pytest.raises(lateseq.ChecksumMismatch) as err:
        lateseq.materialize(store, moved, lateseq.Projection(5))
    assert "1970" not in str(err.value)
    # nor where the store's own events are as early (synthetic times), whatever else differs (s51B)
    early = lateseq.create(tmp_path / "early", Schema({"item": "int64"}, time_unit="ms"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # (the 1970 warning, which this store earns)
        early = early.commit(pa.table({"user_id": [1, 1], "ts": [7 * 10**8, 8 * 10**8], "item": [1, 2]}))
        log = lateseq.log_examples(early, pa.table({"user_id": [1], "request_ts": [9 * 10**8]}))
    forged = log.set_column(4, "uih_checksum", pa.array([1], pa.uint32()))
    with pytest.raises(lateseq.ChecksumMismatch) as err:
        lateseq.materialize(early, forged, lateseq.Projection(5))
    assert "1970" not in str(err.value)


# ---------------------------------------------------------------- the conversion


values_strategy = st.lists(
    st.one_of(
        st.integers(*INT64),
        st.integers(-(10**9), 10**9),
        st.builds(lambda v, k: max(INT64[0], min(INT64[1], v * 10**k)),
                  st.integers(-(10**6), 10**6), st.sampled_from([3, 6, 9])),
        st.sampled_from([0, -1, 1, INT64[0] + 1, INT64[1], -(10**9), 10**9]),
    ),
    max_size=12,
)


@settings(max_examples=300)
@given(values=values_strategy, source=st.sampled_from(UNITS), target=st.sampled_from(UNITS),
       tz=st.sampled_from([None, "UTC", "America/New_York"]), chunked=st.booleans())
def test_times_to_store_is_exact_or_refuses(values, source, target, tz, chunked):
    times = pa.array(values, pa.timestamp(source, tz=tz))
    if chunked:
        times = pa.chunked_array([times[:len(values) // 2], times[len(values) // 2:]], times.type)
    schema = Schema({"item": "int64"}, time_unit=target)
    want = expected_conversion(values, source, target)
    if isinstance(want, str):
        with pytest.raises(SchemaError, match=want) as err:
            schema.times_to_store(times, "column 'when'")
        assert "column 'when'" in str(err.value) and f"timestamp[{source}" in str(err.value)
        bad = sum(1 for v in values if expected_conversion([v], source, target) == want)
        assert f"{bad} of {len(values)} values" in str(err.value)
    else:
        got = schema.times_to_store(times, "column 'when'")
        assert got.type == pa.int64()
        assert got.to_pylist() == want


@settings(max_examples=100)
@given(values=st.lists(st.integers(*INT64), max_size=8), unit=st.sampled_from([*UNITS, None]),
       int_type=st.sampled_from([pa.int8(), pa.int32(), pa.int64(), pa.uint16()]))
def test_integer_times_are_taken_as_already_in_the_store_unit(values, unit, int_type):
    info = np.iinfo(int_type.to_pandas_dtype())
    values = [min(max(v, int(info.min)), int(info.max)) for v in values]
    schema = Schema({"item": "int64"}, time_unit=unit)
    if unit is not None and values and max(values) // PER_SECOND[unit] >= AFTER_YEAR_3000_S:
        # a finer unit's integers (ms into a store in s: the year 57,970), refused (s47A)
        with pytest.raises(SchemaError, match=rf"ts holds {max(values)}, after the year 3000 counted in the "
                                              rf"store's unit \({WORDS[unit]}\)"):
            schema.times_to_store(pa.array(values, int_type), "ts")
        return
    with warnings.catch_warnings():  # seconds' range into a store in ms (a warning tested on its own) is taken
        warnings.simplefilter("ignore", UserWarning)
        got = schema.times_to_store(pa.array(values, int_type), "ts")
    assert got.type == pa.int64() and got.to_pylist() == values


def test_integers_of_a_finer_unit_are_refused_where_they_meet_the_store(make_store, dir_snapshot):
    """Milliseconds committed to a store in seconds were stored as the year 57,970, and a
    request so stamped saw every event (s47A): refused at commit and at logging, naming the
    column and the unit, the store left as it was; a timestamp past it is taken."""
    store = make_store({"item": "int64"}, time_unit="s").commit(events([1_700_000_000]))
    before = dir_snapshot(store.path)
    with pytest.raises(SchemaError, match=r"column 'ts' holds 1700000000000, after the year 3000 counted in the "
                                          r"store's unit \(seconds\)"):
        store.commit(events([1_700_000_000_000]))
    assert dir_snapshot(store.path) == before
    for call in (lambda: lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [1_700_000_001_000]})),
                 lambda: lateseq.make_pointers(store, [1], [1_700_000_001_000])):
        with pytest.raises(SchemaError, match=r"request_ts holds 1700000001000, after the year 3000"):
            call()
    assert history(store, 1, pa.array([1_700_000_001], pa.int64())) == [1_700_000_000]
    assert history(store, 1, pa.array([2**40], pa.timestamp("s"))) == [1_700_000_000]


@pytest.mark.parametrize("store_unit, given", [("ms", "s"), ("us", "s"), ("us", "ms"), ("ns", "us")])
def test_integers_of_a_coarser_unit_are_told_where_they_meet_the_store(make_store, store_unit, given):
    """Seconds committed to a store in ms were stored as January 1970 without a word (s50A),
    the mirror image of the year-3000 refusal: a warning names the column, both units and
    the factor, where every value falls in the first weeks of 1970 in the store's unit and
    in 1990-2100 in a coarser one; times near the epoch in the store's own unit (a
    synthetic clock from 0) and converted timestamps are taken silently."""
    seconds = [int(dt.datetime(y, 6, 1, tzinfo=dt.UTC).timestamp()) for y in (1990, 2024, 2099)]
    times = [t * PER_SECOND[given] for t in seconds]
    factor = PER_SECOND[store_unit] // PER_SECOND[given]
    store = make_store({"item": "int64"}, time_unit=store_unit)
    told = rf": every integer time falls in the first weeks of 1970 counted in the store's unit \({WORDS[store_unit]}\)"
    with pytest.warns(UserWarning, match=rf"column 'ts'{told}.*if these count {WORDS[given]}, convert them \(times "
                                         rf"\* {factor}\)") as caught:
        store = store.commit(events(times))
    assert caught[0].filename == __file__
    with pytest.warns(UserWarning, match=rf"request_ts{told}"):
        lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [max(times)]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.commit(events([t * factor for t in times]))  # converted
        store.commit(events([0, max(times)]))  # from the epoch on: the store's own clock
        store.commit(events(pa.array(seconds, pa.timestamp("s"))))
        before_1990 = int(dt.datetime(1989, 12, 31, tzinfo=dt.UTC).timestamp()) * PER_SECOND[given]
        store.commit(events([before_1990, max(times)]))  # not all in 1990-2100 in the coarser unit


@pytest.mark.parametrize("unit", ["s", "ms", "us"])  # int64 nanoseconds end in 2262
def test_the_year_3000_is_taken_to_its_last_tick_and_refused_after(unit):
    """The bound counted 3000-01-01T00:00:00 itself as after the year 3000 (s47C)."""
    schema = Schema({"item": "int64"}, time_unit=unit)
    last = AFTER_YEAR_3000_S * PER_SECOND[unit] - 1
    for time in (int(dt.datetime(3000, 1, 1, tzinfo=dt.UTC).timestamp()) * PER_SECOND[unit], last):
        assert schema.times_to_store(pa.array([time]), "ts").to_pylist() == [time]
    with pytest.raises(SchemaError, match=f"ts holds {last + 1}, after the year 3000"):
        schema.times_to_store(pa.array([last + 1]), "ts")


def test_other_time_types_are_refused():
    schema = Schema({"item": "int64"}, time_unit="us")
    for array in (pa.array([1.5]), pa.array(["1"]), pa.array([2**63], pa.uint64()),
                  pa.array([1], pa.duration("s"))):
        with pytest.raises(SchemaError, match="'t'"):
            schema.times_to_store(array, "'t'")
    # dates are whole days: exact in any unit
    assert schema.times_to_store(pa.array([1], pa.date32()), "'t'").to_pylist() == [86_400 * 10**6]
    assert schema.times_to_store(pa.array([86_400_000], pa.date64()), "'t'").to_pylist() == [86_400 * 10**6]
    for date in (pa.date32(), pa.date64()):  # named as given: it said timestamp[s] of a date32 column (s34A)
        message = f"'t' has type {date}, but the store holds plain integer times"
        with pytest.raises(SchemaError, match=re.escape(message)):
            Schema({"item": "int64"}).times_to_store(pa.array([1], date), "'t'")


# ---------------------------------------------------------------- events into a store


def test_events_convert_exactly_into_the_store_unit(make_store):
    """Dates before 1970, zoned timestamps, coarser and finer units, checked with pandas."""
    when = pd.to_datetime(["1969-07-20 20:17:40.5", "1970-01-01", "1999-12-31 23:59:59.999", "2024-03-10 07:30"],
                          format="ISO8601")
    want_us = [int(t.value // 1000) for t in when]  # pandas holds nanoseconds since 1970 (UTC)
    assert want_us[0] < 0
    store = make_store({"item": "int64"}, time_unit="us")
    ms = pa.array(when.values.astype("datetime64[ms]"), pa.timestamp("ms"))
    store = store.commit(events(ms))
    assert history(store, 1, LATER) == want_us

    # the same instants, zoned: Arrow keeps UTC, so they store the same numbers
    zoned = when.tz_localize("UTC").tz_convert("America/New_York")
    tz_events = pa.array(zoned, pa.timestamp("ns", tz="America/New_York"))
    store = store.commit(events(tz_events, users=[2] * 4))
    assert history(store, 2, LATER) == want_us

    # integers are already microseconds
    store = store.commit(events(pa.array([want_us[0] + 1], pa.int64()), users=[3]))
    assert history(store, 3, pa.array([want_us[0] + 2], pa.int64())) == [want_us[0] + 1]


def test_the_issue_microseconds_into_a_seconds_store(make_store, dir_snapshot):
    """timestamp[us] used to be cast silently to int64 microseconds in a seconds store."""
    store = make_store({"item": "int64"}, time_unit="s")
    store = store.commit(events(pa.array([0], pa.int64())))
    before = dir_snapshot(store.path)
    fractional = pa.array([-1_500_000, 2_000_000, 3_000_001], pa.timestamp("us"))  # -1.5 s, 2 s, 3.000001 s
    with pytest.raises(SchemaError) as err:
        store.commit(events(fractional))
    message = str(err.value)
    assert "'ts'" in message and "timestamp[us]" in message and "timestamp[s]" in message
    assert "2 of 3 values" in message and "precision" in message
    assert dir_snapshot(store.path) == before
    whole = pa.array([-2_000_000, 2_000_000], pa.timestamp("us"))
    store = store.commit(events(whole, users=[5, 5]))
    assert history(store, 5, pa.array([3], pa.int64())) == [-2, 2]


def test_nanoseconds_that_are_not_whole_microseconds(make_store, dir_snapshot):
    store = make_store({"item": "int64"}, time_unit="us")
    store = store.commit(events(pa.array([1], pa.int64())))
    before = dir_snapshot(store.path)
    ns = pd.to_datetime(["2024-01-01 00:00:00.000001", "2024-01-01 00:00:00.0000015"])
    with pytest.raises(SchemaError, match="1 of 2 values are not whole microseconds"):
        store.commit(events(pa.array(ns, pa.timestamp("ns"))))
    assert dir_snapshot(store.path) == before


def test_overflow_is_refused(make_store, dir_snapshot):
    store = make_store({"item": "int64"}, time_unit="ns")
    store = store.commit(events(pa.array([1], pa.int64())))
    before = dir_snapshot(store.path)
    far = 10**10  # seconds: year 2286, beyond int64 nanoseconds
    with pytest.raises(SchemaError, match="1 of 2 values overflow int64") as err:
        store.commit(events(pa.array([0, far], pa.timestamp("s"))))
    assert "timestamp[ns]" in str(err.value)
    with pytest.raises(SchemaError, match="overflow"):
        lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": pa.array([-far], pa.timestamp("s"))}))
    # a date is named as the user gave it, not as the timestamp it is read as (s41C: "timestamp[s]")
    with pytest.raises(SchemaError, match=r"'ts' has type date32\[day\]: 1 of 1 values overflow int64"):
        store.commit(events(pa.array([dt.date(1600, 1, 1)], pa.date32())))
    assert dir_snapshot(store.path) == before


def test_empty_inputs(make_store, dir_snapshot):
    store = make_store({"item": "int64"}, time_unit="ms")
    before = dir_snapshot(store.path)
    with pytest.raises(SchemaError, match="empty"):
        store.commit(events(pa.array([], pa.timestamp("us"))))
    assert dir_snapshot(store.path) == before
    got = store.schema.times_to_store(pa.array([], pa.timestamp("ns")), "ts")
    assert got.type == pa.int64() and len(got) == 0
    log = lateseq.log_examples(store, pa.table({"user_id": pa.array([], pa.int64()),
                                                "request_ts": pa.array([], pa.timestamp("s"))}))
    assert log.num_rows == 0 and log.schema.field("request_ts").type == pa.int64()


def test_nulls_are_still_refused(make_store):
    store = make_store({"item": "int64"}, time_unit="ms")
    with pytest.raises(SchemaError, match="null"):
        store.commit(events(pa.array([1, None], pa.timestamp("ms"))))
    with pytest.raises(SchemaError, match="null"):
        lateseq.make_pointers(store, np.array([1]), pa.array([None], pa.timestamp("ms")))


def test_arrival_times_are_times_too(tmp_path):
    schema = Schema({"item": "int64", "arrival_ts": "int64", "event_id": "int64"},
                    arrival_col="arrival_ts", event_id_col="event_id", time_unit="ms")
    tier = InMemoryTier(schema, retention=10_000)
    tier.append(pa.table({"user_id": [1], "ts": pa.array([2], pa.timestamp("s")), "item": [7],
                          "arrival_ts": pa.array([3], pa.timestamp("s")), "event_id": [1]}))
    got = tier.drain(None, 10**9)
    assert got.column("ts").to_pylist() == [2000] and got.column("arrival_ts").to_pylist() == [3000]
    plain = lateseq.create(tmp_path / "plain", Schema(
        {"item": "int64", "arrival_ts": "int64", "event_id": "int64"}, arrival_col="arrival_ts",
        event_id_col="event_id"))
    with pytest.raises(SchemaError, match="'arrival_ts'.*plain integer"):
        plain.commit(pa.table({"user_id": [1], "ts": [2], "item": [7],
                               "arrival_ts": pa.array([3], pa.timestamp("s")), "event_id": [1]}))


# ---------------------------------------------------------------- request times


def test_the_issue_millisecond_requests_against_a_microsecond_store(make_store):
    """A timestamp[ms] request_ts against timestamp[us] events used to see nothing."""
    t0 = pd.Timestamp("2024-05-01 12:00:00")
    ev = [t0 + pd.Timedelta(milliseconds=m) for m in (0, 1, 2)]
    store = make_store({"item": "int64"}, time_unit="us")
    store = store.commit(events(pa.array(ev, pa.timestamp("us"))))
    request = t0 + pd.Timedelta(milliseconds=2)  # sees the first two events, not the third
    want = [int(t.value // 1000) for t in ev[:2]]
    assert history(store, 1, pa.array([request], pa.timestamp("ms"))) == want
    assert history(store, 1, pa.array([request], pa.timestamp("ns", tz="Europe/Paris"))) == want
    assert history(store, 1, pa.array([request.value // 1000], pa.int64())) == want  # integers: already us
    # make_pointers takes numpy datetime64 too
    pointers = lateseq.make_pointers(store, np.array([1]), np.array([request.value // 10**6], "datetime64[ms]"))
    assert pointers.column("request_ts").to_pylist() == [request.value // 1000]
    assert pointers.column("uih_length").to_pylist() == [2]
    # and plain integers, as before
    pointers = lateseq.make_pointers(store, [1], [request.value // 1000])
    assert pointers.column("uih_length").to_pylist() == [2]


def test_pandas_request_times_keep_every_nanosecond(make_store):
    """numpy turns a time-zoned Series into Timestamp objects, which Arrow read to the
    microsecond: the pointer named another time, and its checksum agreed with it. So did a
    Series of Timestamp objects (through pandas' own Arrow export) and a column that
    exports Arrow (polars) read through numpy."""
    t = 1_700_000_000_000_000_000
    store = make_store({"item": "int64"}, time_unit="ns")
    store = store.commit(pa.table({"user_id": [1], "ts": [t + 100], "item": [7]}))
    tz_series = pd.Series(pd.to_datetime([t + 500], unit="ns", utc=True))
    paris = pd.Timestamp(t + 500, tz="Europe/Paris")
    for times in (tz_series, pd.DatetimeIndex(tz_series), tz_series.dt.tz_convert("Asia/Kolkata"),
                  [pd.Timestamp(t + 500)], [paris], np.array([pd.Timestamp(t + 500)], dtype=object),
                  pd.Series([paris], dtype=object), pd.Series([pd.Timestamp(t + 500)], dtype=object),
                  pd.Index([paris], dtype=object), ArrowExporter(pa.array([t + 500], pa.timestamp("ns")))):
        pointers = lateseq.make_pointers(store, [1], times)
        assert pointers.column("request_ts").to_pylist() == [t + 500], times
        assert pointers.column("uih_length").to_pylist() == [1], times
    seconds = make_store({"item": "int64"}, time_unit="s")
    for times in (tz_series, [pd.Timestamp(t + 500)]):  # not whole seconds: refused, not cut
        with pytest.raises(SchemaError, match="not whole seconds"):
            lateseq.make_pointers(seconds, [1], times)


def test_request_times_that_would_lose_precision_are_refused_with_the_exact_advice(make_store):
    """It said "round them first": rounded down or to the nearest, a request at 11.4 s lost
    the event at 11 s; rounded up, as it now says, it is exact (a stranger's)."""
    store = make_store({"item": "int64"}, time_unit="s")
    store = store.commit(events(pa.array([10, 11], pa.int64())))
    at = pa.array([11_400], pa.timestamp("ms"))
    with pytest.raises(SchemaError, match=r"request_ts.*not whole seconds.*round them up first \(pyarrow.compute"
                                          r".ceil_temporal\(times, unit='second'\)\)"):
        lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": at}))
    log = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": pc.ceil_temporal(at, unit="second")}))
    assert log.column("uih_length").to_pylist() == [2]  # the events before 11.4 s
    with pytest.raises(SchemaError, match=r"column 'ts'.*not whole seconds.*round them first, or use"):
        store.commit(events(at))  # an event's time: no rounding is the exact one


def test_logs_with_timestamp_request_times_are_read_against_the_schema(make_store):
    store = make_store({"item": "int64"}, time_unit="us")
    store = store.commit(events(pa.array([1_000_000, 2_000_000], pa.int64())))
    log = lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [2_000_000]}))
    as_ms = log.set_column(1, "request_ts", pa.array([2000], pa.timestamp("ms")))
    pointers = pointers_from_log(as_ms, store.schema)
    assert pointers.request_ts.tolist() == [2_000_000]
    assert pointers.length.tolist() == [1]
    with pytest.raises(PointerError, match="timestamp\\[ms\\].*schema"):
        lateseq.Pointers.from_arrow(as_ms)  # it cannot know the unit
    lossy = log.set_column(1, "request_ts", pa.array([1], pa.timestamp("ns")))
    with pytest.raises(SchemaError, match="not whole microseconds"):
        pointers_from_log(lossy, store.schema)
    assert pointers_from_log(log, store.schema).request_ts.tolist() == [2_000_000]


# ---------------------------------------------------------------- the CLI




def test_ingest_time_unit(tmp_path, dir_snapshot):
    ints = tmp_path / "ints.parquet"
    pq.write_table(events(pa.array([1000, 2000], pa.int64())), ints)
    stamps = tmp_path / "stamps.parquet"  # (Parquet has no seconds: timestamps are ms at the coarsest)
    pq.write_table(events(pa.array([3_000_000, 4_000_000], pa.timestamp("us"))), stamps)
    fine_ints = tmp_path / "fine-ints.parquet"
    pq.write_table(events(pa.array([1_500], pa.int64())), fine_ints)

    code, out, err = cli("ingest", tmp_path / "a", ints, "--time-unit", "ms")
    assert (code, out) == (0, "1\n"), err
    assert lateseq.open(tmp_path / "a").schema.time_unit == "ms"
    code, out, err = cli("ingest", tmp_path / "a", stamps)  # microseconds into a milliseconds store
    assert (code, out) == (0, "2\n"), err
    assert history(lateseq.open(tmp_path / "a"), 1, pa.array([10**10], pa.int64())) == [1000, 2000, 3000, 4000]

    code, out, err = cli("ingest", tmp_path / "b", stamps)  # the column brings its unit
    assert code == 0, err
    assert lateseq.open(tmp_path / "b").schema.time_unit == "us"
    code, out, err = cli("ingest", tmp_path / "c", ints)  # integers, no unit given: plain
    assert code == 0, err
    assert lateseq.open(tmp_path / "c").schema.time_unit is None

    before = dir_snapshot(tmp_path)
    # integers into a store that counts a unit: what they count must be said (epoch
    # milliseconds taken as the store's microseconds were events in January 1970)
    one_line_error(*cli("ingest", tmp_path / "a", ints)[::2], "plain integers", "counts ms", "--time-unit")
    one_line_error(*cli("ingest", tmp_path / "a", stamps, "--time-unit", "us")[::2], "its own unit")
    one_line_error(*cli("ingest", tmp_path / "a", fine_ints, "--time-unit", "us")[::2], "not whole milliseconds",
                   "integer 'ts' read as --time-unit us")  # about the option given, not a type made of it
    one_line_error(*cli("ingest", tmp_path / "c", ints, "--time-unit", "s")[::2], "--time-unit")
    one_line_error(*cli("ingest", tmp_path / "c", stamps)[::2], "plain integer", "--time-unit us")
    one_line_error(*cli("ingest", tmp_path / "d", ints, "--time-unit", "hours")[::2], "hours")
    one_line_error(*cli("ingest", tmp_path / "e", stamps, "--time-unit", "h")[::2], "--time-unit")
    floats = tmp_path / "floats.parquet"  # epoch seconds as pandas leaves a column that once held NaN
    pq.write_table(events(pa.array([1.0, 2.0], pa.float64())), floats)
    before = dir_snapshot(tmp_path)
    one_line_error(*cli("ingest", tmp_path / "a", floats)[::2], "double", "integers, timestamps or dates")
    code, _, err = cli("ingest", tmp_path / "a", floats, "--time-unit", "s")
    one_line_error(code, err, "'ts' holds double", "cast them to int64")
    assert "its own unit" not in err  # a double has none: that advice sent the user back to the first error
    assert dir_snapshot(tmp_path) == before
    assert not (tmp_path / "d").exists()
    code, out, err = cli("ingest", tmp_path / "a", ints, "--time-unit", "s")  # seconds, in a milliseconds store
    assert (code, out) == (0, "3\n"), err
    assert history(lateseq.open(tmp_path / "a"), 1, pa.array([10**7], pa.int64())) == [
        1000, 2000, 3000, 4000, 1_000_000, 2_000_000]
    # a timestamp file into a new store of a coarser unit than it holds: refused, nothing created
    fine = tmp_path / "fine.parquet"
    pq.write_table(events(pa.array([1, 1_500], pa.timestamp("ms"))), fine)
    one_line_error(*cli("ingest", tmp_path / "f", fine, "--time-unit", "s")[::2], "not whole seconds")
    assert not (tmp_path / "f").exists()
    # a daily job's one command line: --time-unit that made the store is its unit, so it stays welcome (s38A)
    code, out, err = cli("ingest", tmp_path / "b", stamps, "--time-unit", "us")
    assert (code, out) == (0, "2\n"), err
    one_line_error(*cli("ingest", tmp_path / "b", stamps, "--time-unit", "ms")[::2], "its own unit",
                   "this store counts us")
    # a new store's first input a quiet hour's folder (only _SUCCESS): no columns to take a schema from
    quiet = tmp_path / "hour00"
    quiet.mkdir()
    (quiet / "_SUCCESS").touch()
    one_line_error(*cli("ingest", tmp_path / "g", quiet, "--allow-empty")[::2], "holds no columns",
                   "a new store takes its schema from its first input")
    assert not (tmp_path / "g").exists()


def test_pointers_time_unit(tmp_path):
    """Integer request times in a store that counts a unit: ``--time-unit`` says what they
    count (epoch milliseconds read as microseconds asked about January 1970: every history
    was empty, and exit 0)."""
    stamps = tmp_path / "stamps.parquet"
    pq.write_table(events(pa.array([3_000_000, 4_000_000], pa.timestamp("us"))), stamps)
    assert cli("ingest", tmp_path / "s", stamps)[0] == 0  # a microseconds store
    requests = tmp_path / "requests.parquet"
    pq.write_table(pa.table({"user_id": pa.array([1, 1], pa.int64()), "request_ts": pa.array([3_500, 5_000],
                                                                                             pa.int64())}), requests)
    one_line_error(*cli("pointers", tmp_path / "s", requests, "--out", tmp_path / "x.parquet")[::2],
                   "plain integers", "counts us", "--time-unit")
    assert not (tmp_path / "x.parquet").exists()
    code, _, err = cli("pointers", tmp_path / "s", requests, "--out", tmp_path / "ms.parquet", "--time-unit", "ms")
    assert code == 0, err
    log = pq.read_table(tmp_path / "ms.parquet")
    assert log.column("request_ts").to_pylist() == [3_500_000, 5_000_000]
    assert log.column("uih_length").to_pylist() == [1, 2]


def test_ingest_time_unit_converts_every_time_column(tmp_path, dir_snapshot):
    """A two-tier store's arrival column is a time too: ``--time-unit`` converts it with the
    event times (it was stored as given: arrivals 1000x too small, before their events)."""
    store = tmp_path / "s"
    lateseq.create(store, lateseq.Schema({"item": "int64", "arrival_ts": "int64"}, time_unit="us",
                                         arrival_col="arrival_ts"))
    ms = 1_700_000_000_000
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"user_id": pa.array([1, 1], pa.int64()), "ts": pa.array([ms, ms + 10], pa.int64()),
                             "item": [1, 2], "arrival_ts": pa.array([ms + 5, ms + 20], pa.int64())}), ints)
    mixed = tmp_path / "mixed.parquet"  # event times as timestamps, arrivals as integers
    pq.write_table(pa.table({"user_id": pa.array([1], pa.int64()), "ts": pa.array([ms + 30], pa.timestamp("ms")),
                             "item": [3], "arrival_ts": pa.array([ms + 40], pa.int64())}), mixed)
    huge = tmp_path / "huge.parquet"
    pq.write_table(pa.table({"user_id": pa.array([1], pa.int64()), "ts": pa.array([2**63], pa.uint64()),
                             "item": [4], "arrival_ts": pa.array([1], pa.int64())}), huge)
    dates = tmp_path / "dates.parquet"
    pq.write_table(pa.table({"user_id": pa.array([1], pa.int64()), "ts": pa.array([19_000], pa.date32()),
                             "item": [5], "arrival_ts": pa.array([19_000], pa.date32())}), dates)
    before = dir_snapshot(store)
    one_line_error(*cli("ingest", store, mixed)[::2], "'arrival_ts' hold plain integers", "--time-unit")
    one_line_error(*cli("ingest", store, huge, "--time-unit", "ms")[::2], "'ts' holds integers that do not fit int64")
    one_line_error(*cli("ingest", store, dates, "--time-unit", "ms")[::2], "has none", "date32")
    one_line_error(*cli("ingest", store, ints, "--time-unit", "s")[::2],  # ms said to be s: the year 55,840 (s47A)
                   f"integer 'ts' read as --time-unit s: {ms + 10} is after the year 3000 in seconds")
    assert dir_snapshot(store) == before
    fresh = tmp_path / "fresh"  # a new store named the column, not the file (s47C)
    one_line_error(*cli("ingest", fresh, ints, "--time-unit", "s")[::2],
                   f"ints.parquet's integer 'ts' read as --time-unit s: {ms + 10} is after the year 3000 in seconds")
    assert not fresh.exists()
    for path in (ints, mixed):
        code, _, err = cli("ingest", store, path, "--time-unit", "ms")
        assert code == 0, err
    handle = lateseq.open(store)
    log = lateseq.log_examples(handle, pa.table({"user_id": [1], "request_ts": LATER}))
    got = lateseq.materialize(handle, log, lateseq.Projection(10, ("ts", "arrival_ts"))).values
    assert got["ts"].tolist() == [ms * 1000, (ms + 10) * 1000, (ms + 30) * 1000]
    assert got["arrival_ts"].tolist() == [(ms + 5) * 1000, (ms + 20) * 1000, (ms + 40) * 1000]


# counts a user passes as Python or numpy integers (a config read with numpy, a shape);
# bools, whole floats and strings are refused, naming the argument


@pytest.mark.parametrize("good", [4, np.int64(4), np.uint16(4), np.int8(4)])
def test_counts_take_numpy_integers(tmp_path, good):
    schema = Schema({"item": "int64"}, partitions=good)
    assert schema.partitions == 4 and type(schema.partitions) is int
    lateseq.create(tmp_path / "p", schema)  # the schema file is JSON: a numpy int would not serialize
    assert lateseq.open(tmp_path / "p").schema.partitions == 4
    store = lateseq.create(tmp_path / "s", Schema({"item": "int64"}, partitions=1))
    for user in (1, 2):
        store = store.commit(events(pa.array([5], pa.int64()), [user]))
    assert store.compact(policy="tiered", fanout=np.int32(2)).version > store.version
    assert store.cleanup(grace_s=0, before=np.int64(store.version)) is not None


@pytest.mark.parametrize("bad", [True, 4.0, "4", None, np.float64(4), np.bool_(True)])
def test_counts_refuse_what_is_not_an_integer(tmp_path, bad):
    with pytest.raises(SchemaError, match="partitions must be an integer from 1 to 65536, got"):
        Schema({"item": "int64"}, partitions=bad)
    store = lateseq.create(tmp_path / "s", Schema({"item": "int64"})).commit(events(pa.array([5], pa.int64())))
    with pytest.raises(SchemaError, match="fanout must be an integer >= 2, got"):
        store.compact(policy="tiered", fanout=bad)
    if bad != "4":  # a version's number written out names it, as the CLI's --before 4 does
        with pytest.raises(SchemaError, match="before must be a version number, a tag or 'latest', got"):
            store.cleanup(grace_s=0, before=bad)
    batch = lateseq.materialize(store, lateseq.log_examples(store, pa.table({"user_id": [1], "request_ts": [9]})),
                                PROJECTION)
    if bad is not None:  # None is the longest history's length
        with pytest.raises(SchemaError, match="padded: length must be a non-negative integer, got"):
            batch.padded("item", bad)


def test_a_count_out_of_range_names_its_bounds():
    with pytest.raises(SchemaError, match=r"partitions must be an integer from 1 to 65536, got 0$"):
        Schema({"item": "int64"}, partitions=0)
    with pytest.raises(SchemaError, match=r"partitions must be an integer from 1 to 65536, got 65537$"):
        Schema({"item": "int64"}, partitions=np.int64(65537))


def test_int96_times_beyond_the_nanosecond_range_are_read_exactly(make_store, tmp_path):
    """Spark, Hive and Impala write timestamps as INT96, which pyarrow reads as nanoseconds
    by default, wrapping outside 1677-2262: 9999-12-31, a common "no end" date, read as
    1816-03-29 and sorted first."""
    times = [dt.datetime(1500, 1, 1), dt.datetime(2024, 1, 1, 0, 0, 0, 1), dt.datetime(9999, 12, 31)]
    path = tmp_path / "spark.parquet"
    pq.write_table(events(pa.array(times, pa.timestamp("us"))), path, use_deprecated_int96_timestamps=True)
    expected = [(t - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1) for t in times]
    store = make_store(time_unit="us").commit(path)
    assert history(store, 1, LATER) == expected
    assert history(store, 1, pa.array([expected[1] + 1], pa.int64())) == expected[:2]
    code, _, err = cli("ingest", tmp_path / "cli", path)
    assert code == 0, err
    assert history(lateseq.open(tmp_path / "cli"), 1, LATER) == expected


def test_int96_nanoseconds_are_kept_where_every_time_fits(make_store, tmp_path, dir_snapshot):
    folder = tmp_path / "events"
    folder.mkdir()
    pq.write_table(events(pa.array([10**18 + 1, 10**18 + 2], pa.timestamp("ns"))), folder / "a.parquet",
                   use_deprecated_int96_timestamps=True)  # 2001, a nanosecond apart
    store = make_store(time_unit="ns").commit(folder / "a.parquet")
    assert history(store, 1, pa.array([10**18 + 2], pa.int64())) == [10**18 + 1]
    # beside a file of a time that only microseconds hold, the nanosecond would be lost
    pq.write_table(events(pa.array([dt.datetime(9999, 12, 31)], pa.timestamp("us"))), folder / "b.parquet",
                   use_deprecated_int96_timestamps=True)
    before = dir_snapshot(store.path)
    with pytest.raises(SchemaError, match="beyond 1677-2262 and times finer than a microsecond"):
        make_store(time_unit="us").commit(folder)
    assert dir_snapshot(store.path) == before
    (folder / "a.parquet").unlink()
    pq.write_table(events(pa.array([10**18], pa.timestamp("ns"))), folder / "a.parquet",
                   use_deprecated_int96_timestamps=True)
    whole = make_store(time_unit="us").commit(folder)
    assert history(whole, 1, LATER) == [10**15, 253402214400 * 10**6]


@pytest.mark.parametrize("int96_first", [True, False])
def test_a_folder_of_int96_and_millisecond_times_is_refused_whichever_file_comes_first(make_store, tmp_path,
                                                                                        int96_first):
    """It was read or refused depending on the files' names (a stranger's)."""
    folder = tmp_path / "events"
    folder.mkdir()
    names = ("a.parquet", "b.parquet") if int96_first else ("b.parquet", "a.parquet")
    pq.write_table(events(pa.array([10**12], pa.timestamp("ms"))), folder / names[0],
                   use_deprecated_int96_timestamps=True)
    pq.write_table(events(pa.array([10**12 + 1], pa.timestamp("ms"))), folder / names[1])
    with pytest.raises(SchemaError, match="hold different types"):
        make_store(time_unit="ms").commit(folder)


def test_tier_retention_counts_seconds_whatever_the_store_unit(tmp_path):
    """An hour of retention kept events 3.6 s in a millisecond store: a redelivery 20 s
    later was no longer known, and the tier served the event twice."""
    served = {}
    for unit in ("s", "ms", "ns"):
        schema = Schema({"item": "int64", "arr": "int64", "eid": "int64"}, arrival_col="arr", event_id_col="eid",
                        time_unit=unit)
        store = lateseq.create(tmp_path / unit, schema)
        tier = InMemoryTier(schema, retention=3600)
        second, t0 = PER_SECOND[unit], 1_700_000_000 * PER_SECOND[unit]
        tier.append(pa.table({"user_id": [1], "ts": [t0], "item": [7], "arr": [t0], "eid": [1]}))
        store = fold(store, tier, t0 + 10 * second)
        assert tier.expire(now=t0 + 10 * second, folded_watermark=t0 + 10 * second) == t0 - 3590 * second
        tier.append(pa.table({"user_id": [1], "ts": [t0], "item": [7], "arr": [t0 + 20 * second], "eid": [1]}))
        _, batch = OnlineReader(store, tier, lateseq.Projection(10, ("item",))).serve(
            pa.table({"user_id": [1], "request_ts": [t0 + 25 * second]}))
        served[unit] = batch.values["item"].tolist()
        tier.expire(now=t0 + 3500 * second, folded_watermark=t0 + 10 * second)
        assert len(tier) == 1  # within the hour (the redelivery was dropped as one)
        tier.expire(now=t0 + 3700 * second, folded_watermark=t0 + 10 * second)
        assert len(tier) == 0
    assert served == {"s": [7], "ms": [7], "ns": [7]}

"""JaggedBatch helpers: dense padding, Arrow lists and torch tensors, against plain loops."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lateseq import JaggedBatch, SchemaError


def batch_of(rows: list[list[int]]) -> JaggedBatch:
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    values = np.array([v for r in rows for v in r], np.int64)
    return JaggedBatch(offsets, {"item": values, "flag": values % 2 == 0}, np.zeros(len(rows), bool))


rows_strategy = st.lists(st.lists(st.integers(-5, 50), max_size=7), max_size=6)


@settings(max_examples=80, deadline=None)
@given(rows=rows_strategy, width=st.one_of(st.none(), st.integers(0, 9)), side=st.sampled_from(["right", "left"]))
def test_padded_keeps_the_newest_events(rows, width, side):
    dense = batch_of(rows).padded("item", length=width, pad_value=-1, side=side)
    expected_width = max((len(r) for r in rows), default=0) if width is None else width
    assert dense.shape == (len(rows), expected_width)
    for r, got in zip(rows, dense, strict=True):
        newest = r[len(r) - min(len(r), expected_width):]
        pad = [-1] * (expected_width - len(newest))
        assert got.tolist() == (newest + pad if side == "right" else pad + newest)


@pytest.mark.parametrize("dtype", ["int8", "uint16", "int32", "uint64", "float16", "float32", "float64", "bool"])
@settings(max_examples=25, deadline=None)
@given(data=st.data(), width=st.integers(0, 9), side=st.sampled_from(["right", "left"]))
def test_padded_copies_every_dtype_bit_for_bit(dtype, data, width, side):
    """Values as bits: NaN payloads, -0.0 and the largest integers come out as they went in."""
    lengths = data.draw(st.lists(st.integers(0, 12), max_size=6))
    bits = np.dtype(f"u{np.dtype(dtype).itemsize}")
    raw = np.array(data.draw(st.lists(st.integers(0, np.iinfo(bits).max), min_size=sum(lengths),
                                      max_size=sum(lengths))), bits)
    values = (raw % 2).astype(bool) if dtype == "bool" else raw.view(dtype)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    batch = JaggedBatch(offsets, {"x": values}, np.zeros(len(lengths), bool))
    pad = True if dtype == "bool" else 7
    dense = batch.padded("x", width, side=side, pad_value=pad)
    assert dense.dtype == values.dtype and dense.shape == (len(lengths), width)
    for r, got in enumerate(dense):
        row = values[offsets[r]:offsets[r + 1]]
        newest = row[len(row) - min(len(row), width):]
        fill = np.full(width - len(newest), pad, values.dtype)
        want = np.concatenate([newest, fill] if side == "right" else [fill, newest])
        assert got.view(np.uint8).tobytes() == want.view(np.uint8).tobytes()


@settings(max_examples=40, deadline=None)
@given(rows=rows_strategy)
def test_to_arrow_is_one_list_per_row(rows):
    table = batch_of(rows).to_arrow()
    assert table.column("item").to_pylist() == rows
    assert table.column("flag").to_pylist() == [[v % 2 == 0 for v in r] for r in rows]
    assert table.schema.field("item").type == pa.list_(pa.int64())


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, data=st.data())
def test_take_is_the_rows_asked_for_in_their_order(rows, data):
    batch = batch_of(rows)
    batch.mismatched = np.arange(len(rows)) % 2 == 1
    picked = data.draw(st.lists(st.integers(0, max(len(rows) - 1, 0)), max_size=8) if rows else st.just([]))
    taken = batch.take(np.array(picked, np.int64))
    assert taken.to_arrow().column("item").to_pylist() == [rows[i] for i in picked]
    assert taken.to_arrow().column("flag").to_pylist() == [[v % 2 == 0 for v in rows[i]] for i in picked]
    assert taken.mismatched.tolist() == [i % 2 == 1 for i in picked]
    assert taken.values["item"].dtype == np.int64 and taken.offsets[0] == 0
    kept = batch.take(~batch.mismatched)  # a mask, as the class docstring says to drop them
    assert kept.to_arrow().column("item").to_pylist() == rows[::2]


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, data=st.data())
def test_slice_is_the_rows_between_sharing_their_values(rows, data):
    batch = batch_of(rows)
    batch.mismatched = np.arange(len(rows)) % 3 == 1
    start = data.draw(st.integers(0, len(rows)))
    stop = data.draw(st.integers(start, len(rows)))
    part = batch.slice(start, stop)
    assert part.to_arrow().column("item").to_pylist() == rows[start:stop]
    assert part.mismatched.tolist() == batch.mismatched[start:stop].tolist()
    assert part.offsets[0] == 0 and len(part.offsets) == stop - start + 1
    taken = batch.take(np.arange(start, stop))  # a copy of the same rows
    assert all(np.array_equal(part.values[k], taken.values[k]) for k in taken.values)
    if len(part.values["item"]):  # views: no copy made
        assert np.shares_memory(part.values["item"], batch.values["item"])
    for bad in ((stop, start - 1), (-1, stop), (start, len(rows) + 1), (0.5, 1)):
        with pytest.raises(SchemaError, match="slice: st"):
            batch.slice(*bad)


def test_to_torch_shares_the_data():
    torch = pytest.importorskip("torch")
    batch = batch_of([[1, 2], [], [3]])
    tensors = batch.to_torch()
    assert tensors["offsets"].tolist() == [0, 2, 2, 3]
    assert tensors["lengths"].tolist() == [2, 0, 1]
    assert tensors["item"].dtype == torch.int64 and tensors["item"].tolist() == [1, 2, 3]
    assert tensors["flag"].dtype == torch.bool
    assert batch.to_torch(device="cpu")["item"].device.type == "cpu"
    if not torch.cuda.is_available():  # nothing to pin for: plain tensors, as Batch.pin_memory (it raised, s36C)
        assert batch.to_torch(pin_memory=True)["item"].tolist() == [1, 2, 3]
    with pytest.raises(SchemaError, match="pin_memory must be True or False, not 'no'"):  # s36G: "no" was true
        batch.to_torch(pin_memory="no")


PADS = [  # (dtype, pad value, whether the column holds it exactly)
    ("int64", -1, True), ("int64", 0.0, True), ("int64", 1.7, False), ("int64", float("nan"), False),
    ("int64", 2**64, False), ("int64", "0", False), ("int64", None, False), ("uint8", -1, False),
    ("int8", 300, False), ("int8", -128, True), ("bool", -1, False), ("bool", True, True), ("bool", 1, True),
    ("float32", float("nan"), True), ("float32", -np.inf, True), ("float32", 1e300, False),
    ("float32", 2**24 + 1, False), ("float64", np.float32(0.5), True), ("int32", np.int64(2**31), False),
    ("int64", True, False), ("uint8", np.bool_(False), False), ("float32", True, False),  # s35E: True padded with 1
]


@pytest.mark.parametrize("dtype, pad_value, fits", PADS)
def test_padded_refuses_a_pad_value_its_column_does_not_hold_exactly(dtype, pad_value, fits):
    """numpy casts a pad value silently: 1.7 into an id column padded with item 1, -1 into
    a bool one with True, and a mask made from the padding then marked real events."""
    values = np.array([1, 0, 1], dtype)
    batch = JaggedBatch(np.array([0, 3, 3]), {"x": values}, np.zeros(2, bool))
    if not fits:
        with pytest.raises(SchemaError, match=f"pad_value .* does not fit column 'x' of {dtype}"):
            batch.padded("x", 4, pad_value=pad_value)
        return
    dense = batch.padded("x", 4, pad_value=pad_value)
    pad = np.array(pad_value, dtype) if not isinstance(pad_value, float) else np.array(pad_value).astype(dtype)
    assert dense[1].view(np.uint8).tolist() == np.full(4, pad, dtype).view(np.uint8).tolist()


def test_padded_refuses_a_side_or_column_it_does_not_know_and_takes_side_by_keyword_only():
    batch = batch_of([[1, 2], [3]])
    for side in ("Left", "left ", "both"):  # anything but 'left' used to pad on the right
        with pytest.raises(SchemaError, match=f"side must be 'right' or 'left', got {side!r}"):
            batch.padded("item", 3, side=side)
    with pytest.raises(SchemaError, match=r"batch has no column 'itemid'; it has \['flag', 'item'\]"):
        batch.padded("itemid", 3)
    with pytest.raises(TypeError):  # positional, lateseq.torch.Batch.padded's order would be misread
        batch.padded("flag", 3, "left")


def test_padded_names_an_item_size_it_does_not_take():
    wide = np.dtype(np.longdouble)  # 16 bytes on x86-64 Linux: a batch built by hand
    if wide.itemsize == 8:
        pytest.skip("long double is a double here")
    batch = JaggedBatch(np.array([0, 1]), {"x": np.zeros(1, wide)}, np.zeros(1, bool))
    with pytest.raises(TypeError, match=f"padded takes columns of 1, 2, 4 or 8-byte items, not {wide}"):
        batch.padded("x", 2)

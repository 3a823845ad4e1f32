"""The sharding plan alone (no torch): every row exactly once per epoch whatever the
ranks and workers, deterministic per (seed, epoch), affinity, and resume by arithmetic."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lateseq
from lateseq._sampling import RANK_SPREAD, ShardPlan


def every_shard(**config) -> dict[tuple[int, int], list[np.ndarray]]:
    world, workers = config.pop("world_size", 1), config.pop("num_workers", 1)
    return {
        (rank, worker): list(ShardPlan(**config, rank=rank, world_size=world, worker=worker,
                                       num_workers=workers).batches())
        for rank in range(world) for worker in range(workers)
    }


@st.composite
def plans(draw):
    num_rows = draw(st.integers(0, 300))
    config = {
        "num_rows": num_rows,
        "batch_size": draw(st.integers(1, 40)),
        "world_size": draw(st.integers(1, 4)),
        "num_workers": draw(st.integers(1, 5)),
        "shuffle": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32)),
        "epoch": draw(st.integers(0, 3)),
        "block_rows": draw(st.integers(1, 64)),
        "window_rows": draw(st.integers(1, 100)),
    }
    if draw(st.booleans()):  # Parquet row groups, some empty, of uneven sizes
        groups, left = [], num_rows
        while left:
            groups.append(draw(st.integers(0, left)))
            left -= groups[-1]
        config["row_groups"] = tuple(groups + [0] * draw(st.integers(0, 2)))
    return config


def affinity_keys(num_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, max(1, num_rows // 6), num_rows), rng.integers(0, 1000, num_rows)


@settings(max_examples=150)
@given(plans(), st.booleans(), st.booleans())
def test_every_row_comes_out_exactly_once_whatever_the_shards(config, drop_last, affinity):
    keys = affinity_keys(config["num_rows"]) if affinity else None
    shards = {}
    for rank in range(config["world_size"]):
        for worker in range(config["num_workers"]):
            plan = ShardPlan(**{**config, "rank": rank, "worker": worker}, drop_last=drop_last, affinity=affinity)
            shards[rank, worker] = (plan, list(plan.batches(keys=keys)))
    rows = np.concatenate([np.zeros(0, np.int64)] + [b for _, bs in shards.values() for b in bs])
    assert len(np.unique(rows)) == len(rows), "a row came out twice"
    dropped = 0
    for plan, batches in shards.values():
        assert len(batches) == plan.num_batches
        # full batches, but for a shard's last one (or none, with drop_last)
        assert all(len(b) == config["batch_size"] for b in batches[:-1])
        assert all(0 < len(b) <= config["batch_size"] for b in batches[-1:])
        left = plan.num_rows_shard - sum(len(b) for b in batches)
        assert (0 <= left < config["batch_size"]) if drop_last else left == 0
        dropped += left
    if not drop_last:
        assert np.array_equal(np.sort(rows), np.arange(config["num_rows"]))
    assert len(rows) + dropped == config["num_rows"]
    assert all(plan.rows_left_out == dropped for plan, _ in shards.values())


@settings(max_examples=150)
@given(plans(), st.booleans())
def test_even_batches_give_every_rank_as_many_batches_as_the_rank_with_fewest(config, drop_last):
    world, workers = config["world_size"], config["num_workers"]
    plans_ = {(r, w): ShardPlan(**{**config, "rank": r, "worker": w}, drop_last=drop_last, even_batches=True)
              for r in range(world) for w in range(workers)}
    plain = {key: ShardPlan(**{**config, "rank": key[0], "worker": key[1]}, drop_last=drop_last)
             for key in plans_}
    batches = {key: list(plan.batches()) for key, plan in plans_.items()}
    per_rank = [sum(len(batches[r, w]) for w in range(workers)) for r in range(world)]
    fewest = min(sum(plain[r, w].num_batches for w in range(workers)) for r in range(world))
    assert per_rank == [fewest] * world
    for key, got in batches.items():  # each shard yields the start of what it yields uneven
        assert len(got) == plans_[key].num_batches
        assert all(np.array_equal(a, b) for a, b in zip(got, plain[key].batches(), strict=False))
    rows = np.concatenate([np.zeros(0, np.int64)] + [b for bs in batches.values() for b in bs])
    assert len(np.unique(rows)) == len(rows), "a row came out twice"
    assert all(plan.rows_left_out == config["num_rows"] - len(rows) for plan in plans_.values())
    if len({sum(plain[r, w].num_batches for w in range(workers)) for r in range(world)}) == 1:
        assert all(len(batches[key]) == plain[key].num_batches for key in plans_)  # nothing dropped


@settings(max_examples=150)
@given(plans(), st.data())
def test_a_copartitioned_log_deals_each_partition_to_one_shard_and_every_row_once(config, data):
    groups = config.get("row_groups") or ((config["num_rows"],) if config["num_rows"] else ())
    config = {**config, "row_groups": groups}
    parts = tuple(data.draw(st.lists(st.integers(0, 7), min_size=len(groups), max_size=len(groups))))
    world, workers = config.pop("world_size"), config.pop("num_workers")
    starts = np.concatenate([[0], np.cumsum(groups, dtype=np.int64)])
    filled = len({p for p, n in zip(parts, groups) if n})
    if 0 < filled < world:  # a rank would get no examples
        with pytest.raises(lateseq.SchemaError, match="would get none"):
            ShardPlan(**config, world_size=world, num_workers=workers, row_group_partitions=parts)
        return
    seen, shard_of_partition = [], {}
    for rank in range(world):
        for worker in range(workers):
            plan = ShardPlan(**config, rank=rank, world_size=world, worker=worker, num_workers=workers,
                             row_group_partitions=parts)
            for batch in plan.batches():
                seen.append(batch)
            for w in range(len(plan.windows)):  # a block reads whole row groups of one partition
                for g in plan.row_groups_of(w):
                    if groups[g]:  # each partition read by one shard only
                        assert shard_of_partition.setdefault(parts[g], (rank, worker)) == (rank, worker)
    rows = np.concatenate([np.zeros(0, np.int64)] + seen)
    assert np.array_equal(np.sort(rows), np.arange(config["num_rows"])), "rows missing or repeated"
    assert starts[-1] == config["num_rows"]


@settings(max_examples=100)
@given(plans(), st.booleans())
@example({"num_rows": 2, "batch_size": 1, "world_size": 3, "num_workers": 1, "shuffle": False, "seed": 0,
          "epoch": 0, "block_rows": 2, "window_rows": 1}, False)  # fewer rows than ranks: a block went whole to one
def test_ranks_differ_by_at_most_a_block_and_keep_their_rows_every_epoch(config, copartition):
    """Blocks (or, co-partitioned, partitions) dealt round robin left a rank with only a
    short last block in some epochs, and even_batches then cut every rank to its one
    batch: 53 of 305 examples an epoch."""
    world, workers = config.pop("world_size"), config.pop("num_workers")
    if copartition:  # a partition per row group, as many partitions as row groups
        config["row_groups"] = config.get("row_groups") or ((config["num_rows"],) if config["num_rows"] else ())
        config["row_group_partitions"] = tuple(range(len(config["row_groups"])))
        if 0 < sum(1 for n in config["row_groups"] if n) < world:
            return  # refused: see the test above
    plans_ = [ShardPlan(**config, rank=r, world_size=world, worker=w, num_workers=workers)
              for r in range(world) for w in range(workers)]
    per_rank = [sum(p.num_rows_shard for p in plans_ if p.rank == r) for r in range(world)]
    bounds = plans_[0]._block_table[0]  # the blocks dealt to ranks (workers cut a rank's rows)
    # a partition is a row group here
    largest = max(config["row_groups"], default=0) if copartition else int(np.diff(bounds).max(initial=0))
    assert max(per_rank) - min(per_rank) <= largest, (per_rank, largest)
    if not copartition:  # and never far apart: blocks that would leave them so are cut at even shares
        assert max(per_rank) - min(per_rank) <= max(1, RANK_SPREAD * config["num_rows"] / world), per_rank
    # and as many rows every epoch: a shuffled epoch's deal left a rank short of a batch, and even_batches gave
    # every rank none that epoch, where the dataset had checked epoch 0 only (a stranger's)
    later = [ShardPlan(**{**config, "epoch": config["epoch"] + 1}, rank=r, world_size=world, worker=w,
                       num_workers=workers) for r in range(world) for w in range(workers)]
    assert [sum(p.num_rows_shard for p in later if p.rank == r) for r in range(world)] == per_rank


def test_even_batches_drop_at_most_about_a_block_per_rank():
    """The attack's cases, where a short last block was all one rank got in some epochs."""
    for epoch in range(8):  # row groups of 100, 100, 100, 5 on 4 ranks: 53 of 305 served
        shards = every_shard(num_rows=305, batch_size=16, world_size=4, shuffle=True, epoch=epoch,
                             row_groups=(100, 100, 100, 5), even_batches=True)
        served = sum(len(b) for bs in shards.values() for b in bs)
        assert served >= 200, (epoch, served)
        # 4 blocks of 64k rows and one of 6, batches of 1024: 4 of 257 batches served
        batches = sum(ShardPlan(num_rows=4 * 65536 + 6, batch_size=1024, world_size=4, rank=r, shuffle=True,
                                epoch=epoch, even_batches=True).num_batches for r in range(4))
        assert batches == 256, (epoch, batches)
    # log_examples writes row groups of 65,536 rows: a log of 72,000 on 2 ranks was a block of 65,536
    # and one of 6,464, and even_batches trained 13,464 of its rows (s45A)
    for world in (2, 3, 4, 5):
        batches = [ShardPlan(num_rows=72000, batch_size=1000, world_size=world, rank=r, shuffle=True,
                             row_groups=(65536, 6464), even_batches=True).num_batches for r in range(world)]
        assert len(set(batches)) == 1 and batches[0] * world * 1000 >= 72000 - world * 1000, (world, batches)


@settings(max_examples=100)
@given(plans(), st.data())
def test_resuming_after_batch_i_is_the_rest_of_the_uninterrupted_run(config, data):
    affinity = data.draw(st.booleans())
    rank = data.draw(st.integers(0, config["world_size"] - 1))
    worker = data.draw(st.integers(0, config["num_workers"] - 1))
    plan = ShardPlan(**{**config, "rank": rank, "worker": worker}, affinity=affinity)
    keys = affinity_keys(config["num_rows"], 1) if affinity else None
    full = list(plan.batches(keys=keys))
    start = data.draw(st.integers(0, len(full)))
    again = ShardPlan(**{**config, "rank": rank, "worker": worker}, affinity=affinity)  # a new process
    rest = list(again.batches(start, keys=keys))
    assert len(rest) == len(full) - start
    assert all(np.array_equal(a, b) for a, b in zip(rest, full[start:], strict=True))


def test_the_same_seed_and_epoch_give_the_same_order_and_another_epoch_reshuffles():
    config = {"num_rows": 5000, "batch_size": 64, "shuffle": True, "seed": 3, "block_rows": 100, "window_rows": 400,
                  "world_size": 2, "num_workers": 3}
    first = every_shard(**config)
    assert all(np.array_equal(a, b) for s in first for a, b in zip(first[s], every_shard(**config)[s],
                                                                     strict=True))
    for changed in ({"epoch": 1}, {"seed": 4}):
        other = every_shard(**{**config, **changed})
        assert not np.array_equal(np.concatenate(first[0, 0]), np.concatenate(other[0, 0]))
        assert np.array_equal(np.sort(np.concatenate([b for bs in other.values() for b in bs])),
                              np.arange(5000))


def test_shuffle_moves_rows_across_blocks_and_shards_but_off_keeps_log_order():
    plain = every_shard(num_rows=1000, batch_size=10, block_rows=100, world_size=2)
    assert np.array_equal(np.concatenate(plain[0, 0]), np.concatenate([np.arange(a, a + 100)
                                                                       for a in range(0, 1000, 200)]))
    shuffled = np.concatenate(list(ShardPlan(1000, 10, shuffle=True, block_rows=100, window_rows=300).batches()))
    assert not np.array_equal(shuffled, np.arange(1000))
    # rows of different blocks meet in one batch, since windows span blocks
    first_batch = shuffled[:10]
    assert len(set((first_batch // 100).tolist())) > 1


def test_a_ranks_rows_do_not_depend_on_its_number_of_workers():
    base = {"num_rows": 3000, "batch_size": 50, "shuffle": True, "seed": 1, "block_rows": 64, "world_size": 3}
    for rank in range(3):
        sets = []
        for workers in (1, 2, 5):
            batches = [b for w in range(workers) for b in ShardPlan(**base, rank=rank, worker=w,
                                                                    num_workers=workers).batches()]
            sets.append(set(np.concatenate(batches).tolist()))
        assert sets[0] == sets[1] == sets[2]


@settings(max_examples=150)
@given(plans(), st.data(), st.booleans(), st.booleans())
def test_ranks_with_different_numbers_of_workers_serve_every_row_once_and_even_batches_agree(
        config, data, drop_last, copartition):
    """Hosts with other CPU counts run other num_workers: dealing a small log by ranks x
    workers gave two ranks (2 workers and 1) 2,500 rows each other's and left 2,500 out,
    and even_batches gave them 6 and 5 batches (DistributedDataParallel hangs)."""
    world = config.pop("world_size")
    config.pop("num_workers")
    if copartition:
        groups = config.get("row_groups") or ((config["num_rows"],) if config["num_rows"] else ())
        parts = tuple(data.draw(st.lists(st.integers(0, 7), min_size=len(groups), max_size=len(groups))))
        if 0 < len({p for p, n in zip(parts, groups) if n}) < world:
            return  # refused: see above
        config.update(row_groups=groups, row_group_partitions=parts)
    workers = data.draw(st.lists(st.integers(1, 5), min_size=world, max_size=world))  # per rank
    for even in (False, True):
        rows, counts = [], []
        for rank in range(world):
            shards = [ShardPlan(**config, rank=rank, world_size=world, worker=w, num_workers=workers[rank],
                                drop_last=drop_last, even_batches=even) for w in range(workers[rank])]
            batches = [b for plan in shards for b in plan.batches()]
            counts.append(len(batches))
            rows += batches
            if not copartition:  # a rank serves as many batches of its rows whatever its workers
                alone = list(ShardPlan(**config, rank=rank, world_size=world, drop_last=drop_last,
                                       even_batches=even).batches())
                assert len(alone) == len(batches)
                if not (drop_last or even):  # (which rows a short batch dropped held is shuffled)
                    assert set(np.concatenate([[]] + batches).tolist()) == set(np.concatenate([[]] + alone).tolist())
        rows = np.concatenate([np.zeros(0, np.int64)] + rows)
        assert len(np.unique(rows)) == len(rows), "a row came out twice"
        if not even and not drop_last:
            assert len(rows) == config["num_rows"], "a row never came out"
        if even:
            assert len(set(counts)) == 1, counts


def test_more_shards_than_blocks_leaves_some_shards_empty():
    shards = every_shard(num_rows=10, batch_size=4, world_size=3, num_workers=4, block_rows=4)
    sizes = sorted(sum(len(b) for b in bs) for bs in shards.values())
    assert sizes == [0] * 9 + [3, 3, 4]  # blocks of 4, 4 and 2 rows left ranks 2 apart: cut at even shares
    assert every_shard(num_rows=0, batch_size=4, world_size=2) == {(0, 0): [], (1, 0): []}


def test_blocks_are_whole_row_groups():
    groups = (5, 0, 30, 7, 7, 1, 100, 2)
    plan = ShardPlan(sum(groups), 8, shuffle=True, row_groups=groups, block_rows=20, window_rows=1)
    bounds = np.concatenate([[0], np.cumsum(groups)])
    for w in range(len(plan.windows)):
        read = np.concatenate([np.arange(bounds[g], bounds[g + 1]) for g in plan.row_groups_of(w)])
        assert np.array_equal(read, plan.window_rows_of(w))
        sizes = [groups[g] for g in plan.row_groups_of(w)]
        assert sum(sizes) <= 20 or len([n for n in sizes if n]) == 1  # or one big row group
    assert sum(len(plan.window_rows_of(w)) for w in range(len(plan.windows))) == sum(groups)


def test_affinity_groups_a_users_examples_and_keeps_users_in_random_order():
    rng = np.random.default_rng(5)
    users = rng.permutation(np.repeat(np.arange(200), 10))  # 200 users, 10 examples each, scattered
    ts = rng.integers(0, 10**6, len(users))
    config = {"num_rows": len(users), "batch_size": 64, "shuffle": True, "seed": 2, "block_rows": 250,
              "window_rows": 1000}
    grouped = ShardPlan(**config, affinity=True)
    plain = ShardPlan(**config)
    assert np.array_equal(np.sort(np.concatenate(list(grouped.batches(keys=(users, ts))))), np.arange(2000))
    for w in range(len(grouped.windows)):
        rows = grouped.window_rows_of(w)
        order = rows[grouped.order(w, users[rows], ts[rows])]
        runs = users[order][np.r_[True, np.diff(users[order]) != 0]]
        assert len(runs) == len(np.unique(users[rows])), "a user's examples are split within a window"
        for u in np.unique(users[rows]):  # oldest request first within a user
            assert np.all(np.diff(ts[order][users[order] == u]) >= 0)
        assert not np.all(np.diff(runs) > 0) and not np.all(np.diff(runs) < 0), "users come sorted"

    def distinct_users(plan):
        return np.mean([len(np.unique(users[b])) for b in plan.batches(keys=(users, ts))])

    assert distinct_users(grouped) < distinct_users(plain) / 3
    calls = []

    def read_keys(rows):  # keys can be read per window instead of held for the whole log
        calls.append(len(rows))
        return users[rows], ts[rows]

    assert all(np.array_equal(a, b) for a, b in zip(grouped.batches(keys=read_keys),
                                                     grouped.batches(keys=(users, ts)), strict=True))
    assert max(calls) <= 1000 + 250


def test_a_billion_rows_plan_in_bounded_memory_and_resume_near_the_end_at_once():
    started = time.perf_counter()
    plan = ShardPlan(10**9, 1024, shuffle=True, seed=9, epoch=2, rank=5, world_size=8, worker=3, num_workers=4)
    assert abs(len(plan.pieces) - 10**9 / 65536 / 32) < 3  # a worker's quarter of a rank's blocks, two cut
    first = next(plan.batches())
    last = list(plan.batches(plan.num_batches - 2))
    assert len(first) == 1024 and len(last) == 2
    assert all(len(plan.window_rows_of(w)) < 262144 + 65536 for w in (0, len(plan.windows) - 1))
    assert time.perf_counter() - started < 10


def test_bad_input_raises_a_clear_schema_error():
    for kwargs, words in [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"worker": -1}, "worker"),
        ({"num_rows": -1}, "num_rows"),
        ({"seed": -3}, "seed"),
        ({"row_groups": (3, 3)}, "row_groups"),
    ]:
        with pytest.raises(lateseq.SchemaError, match=words):
            ShardPlan(**{"num_rows": 10, "batch_size": 4, **kwargs})
    plan = ShardPlan(10, 4, affinity=True)
    with pytest.raises(lateseq.SchemaError, match="keys"):
        next(plan.batches())
    with pytest.raises(lateseq.SchemaError, match="resume at batch 4"):
        next(ShardPlan(10, 4).batches(4))
    with pytest.raises(lateseq.SchemaError, match="affinity needs"):
        plan.order(0, np.zeros(3), np.zeros(3))


def test_the_plan_does_not_import_torch():
    code = "import sys, lateseq._sampling; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("num_rows", "world_size", "row_groups"), [
    (1000, 3, None), (1000, 3, (1000,)), (1000, 3, (3, 990, 7)),
    # cut into blocks of ceil(rows / ranks), these left the last ranks without (a stranger's)
    (9, 4, None), (997, 64, (997,)), (997, 64, (10, 987)), (130, 64, (0, 2, 0, 128, 0)), (64, 64, (64,))])
def test_a_log_of_fewer_blocks_than_ranks_is_cut_so_every_rank_gets_rows(num_rows, world_size, row_groups):
    """A small log in one big row group (pyarrow writes up to a million rows in one) was a
    single block: rank 1 got nothing, and even_batches then gave every rank nothing."""
    for even in (False, True):
        shards = every_shard(num_rows=num_rows, batch_size=64, world_size=world_size, num_workers=2, shuffle=True,
                             row_groups=row_groups, even_batches=even)
        per_rank = [sum(len(b) for (rank, _), bs in shards.items() if rank == r for b in bs)
                    for r in range(world_size)]
        assert min(per_rank) > 0, per_rank
        rows = np.concatenate([b for bs in shards.values() for b in bs])
        assert len(rows) == len(np.unique(rows)) and (even or len(rows) == num_rows)
    plan = ShardPlan(1000, 64, row_groups=(3, 990, 7), world_size=3, rank=1)
    bounds = np.concatenate([[0], np.cumsum(plan.row_groups)])
    for w in range(len(plan.windows)):  # each piece read from its whole row group, then cut
        read = np.concatenate([np.arange(bounds[gs[0]], bounds[gs[-1] + 1])[skip:skip + take]
                               for gs, skip, take in plan.reads_of(w)])
        assert np.array_equal(read, plan.window_rows_of(w))

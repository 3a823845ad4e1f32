"""Which rows of an example log each loader shard produces, in which batches: torch-free.

A *shard* is one (rank, worker) pair. Over an epoch every row of the log comes out of
exactly one shard exactly once, whatever the number of ranks and workers. Memory stays
bounded whatever the size of the log, because nothing is planned per row globally:

1. The log is cut into *blocks* of consecutive rows (``block_rows``, or whole Parquet
   row groups, since reading part of a row group costs reading all of it; but a log
   whose blocks would leave ranks more than ``RANK_SPREAD`` of a share apart, as fewer
   blocks than ranks do, is cut again into one block per rank, of its even share of the
   rows, row groups split). The blocks are permuted with ``(seed, epoch)`` and dealt, in that order, each
   to the rank with the fewest rows so far: ranks differ by at most a block's rows,
   whatever the blocks' sizes (dealt round robin, a short last block could be all a
   rank got). Nothing here depends on ``num_workers``: ranks on hosts with other CPU
   counts may run other numbers of workers, and every row still comes out once.
2. A rank's rows (its blocks in dealt order) are cut into one run per worker, each a
   whole number of batches but the last: a rank yields as many batches of the same rows
   whatever its number of workers, and a block is split between two workers at most at a run's end.
3. A worker's pieces of blocks, in order, are grouped into *windows* of about
   ``window_rows`` rows; rows are shuffled within a window only, so one window is all a
   shard ever holds. With ``affinity``, a window's rows are ordered by a salted hash of
   the user, then user, then request time: one user's examples sit together (a history
   read serves several of them) while users still come in random order.
4. Batches are consecutive runs of ``batch_size`` rows of the shard's stream (a batch
   may span two windows); only a shard's last batch can be short (or is dropped).
5. With ``row_group_partitions`` (a log written by ``copartition_log``: each row group
   holds examples of one store partition), blocks never mix partitions and whole
   partitions are dealt as in 1 (in the order of their first block in the permutation),
   to ranks and then to the rank's workers, so a worker maps the segments of its own
   partitions only. Ranks then differ by up to a partition's rows, and a log of fewer
   partitions with examples than ranks is refused (a rank would have none).
6. With ``even_batches``, every rank yields as many batches as the rank with fewest
   (DistributedDataParallel steps all ranks together: a rank with one more batch would
   wait forever for the others), a count worked out from the ranks' rows alone, never
   from their numbers of workers. Ranks with more drop their last batches (the end of
   their rows; with partitions, their workers' short last batches first); each shard
   works this out alone, from the plan. With
   partitions a rank's workers each end on a short batch, so up to a batch per worker
   more than in 2 can be left out.

Resuming after ``i`` batches is arithmetic on block sizes: ``slices(start=i)`` begins
at the window holding row ``i * batch_size`` without touching the batches before.

>>> plan = ShardPlan(num_rows=10, batch_size=4, world_size=2, rank=1)
>>> [b.tolist() for b in plan.batches()]
[]
>>> [b.tolist() for b in ShardPlan(num_rows=10, batch_size=4).batches()]
[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ._compat import cached_property
from ._errors import SchemaError, exact_integer, is_integer

BLOCK_ROWS = 65536  # rows per block when the log has no row groups to align with
WINDOW_ROWS = 262144  # rows a shard shuffles together (and holds in memory) at once
# bumped whenever a plan deals rows in another order for the same settings (2: blocks dealt to
# the rank and worker with the fewest rows; 3: a log of fewer blocks than ranks x workers cut
# again; 4: nothing dealt to ranks by num_workers, a rank's rows cut into one run of whole
# batches per worker; 5: a log of fewer blocks than ranks cut at the ranks' even shares; 6: blocks
# dealt to ranks largest first; 7: a log whose blocks leave ranks more than RANK_SPREAD apart
# cut at the ranks' even shares; 8: those of fewer rows than ranks too, a block a row): a resume
# state saved under other rules is refused, not resumed into a different order
DEALING_RULES = 8
# how far apart (a share of a rank's even share of the rows) blocks may leave the ranks before
# the log is cut at even shares instead: under even_batches the others drop what the rank with
# fewest lacks, less than RANK_SPREAD of the log (the dataset warns past 5%)
RANK_SPREAD = 1 / 20

Keys = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ShardPlan:
    """One shard's batches of one epoch of an example log of ``num_rows`` rows.

    ``row_groups`` (rows per Parquet row group, in file order) aligns blocks with row
    groups: a block is one or more whole consecutive row groups of at most
    ``block_rows`` rows in all (a bigger row group is a block by itself), unless there
    would be fewer blocks than ranks (see ``_block_table``); a worker reads pieces of
    blocks (``pieces``).
    """

    num_rows: int
    batch_size: int
    shuffle: bool = False
    seed: int = 0
    epoch: int = 0
    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1
    drop_last: bool = False
    affinity: bool = False
    row_groups: tuple[int, ...] | None = None
    block_rows: int = BLOCK_ROWS
    window_rows: int = WINDOW_ROWS
    even_batches: bool = False
    row_group_partitions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("num_rows", "seed", "epoch"):
            exact_integer(name, getattr(self, name), 0)
        for name in ("batch_size", "world_size", "num_workers", "block_rows", "window_rows"):
            exact_integer(name, getattr(self, name), 1)
        exact_integer("rank", self.rank, 0, int(self.world_size) - 1)  # below world_size
        exact_integer("worker", self.worker, 0, int(self.num_workers) - 1)
        if self.row_groups is not None:
            groups = tuple(int(n) for n in self.row_groups)
            if any(n < 0 for n in groups) or sum(groups) != self.num_rows:
                raise SchemaError(f"row_groups must be non-negative row counts summing to num_rows="
                                  f"{self.num_rows}, got {len(groups)} groups of {sum(groups)} rows")
            object.__setattr__(self, "row_groups", groups)
        if self.row_group_partitions is not None:
            parts = tuple(int(p) for p in self.row_group_partitions)
            if self.row_groups is None or len(parts) != len(self.row_groups) or any(p < 0 for p in parts):
                raise SchemaError("row_group_partitions needs row_groups, a partition for each of them")
            object.__setattr__(self, "row_group_partitions", parts)
            filled = len({p for p, n in zip(parts, self.row_groups, strict=True) if n})
            if 0 < filled < self.world_size:
                raise SchemaError(f"a log co-partitioned into {filled} store partitions with examples cannot feed "
                                  f"world_size={self.world_size} ranks: {self.world_size - filled} would get none "
                                  "(read it without copartition, or from a store of more partitions)")

    # ------------------------------------------------------------ blocks, ranks and workers

    @cached_property
    def _block_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row bounds: blocks+1, first row group: blocks, end row group: blocks) of every
        non-empty block. A log whose blocks, dealt, leave ranks more than ``RANK_SPREAD``
        of a share apart (fewer blocks than ranks; a log of 72,000 rows written by
        ``log_examples`` in row groups of 65,536 and 6,464 over 2 ranks, where
        ``even_batches`` trained 19% of it, s45A) is cut again into one block per rank,
        row groups split: each rank's share is then even, and a row group is read by at
        most the ranks whose shares it straddles. Never by ``num_workers``: ranks may run
        different numbers of workers, and each must still get its own rows."""
        table = self._blocks_of(self.block_rows)
        if self.row_group_partitions is None and self.num_rows and _uneven(np.diff(table[0]), self.world_size):
            table = self._rank_shares()
        return table

    def _rank_shares(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One block per rank, of its even share of the rows (blocks of ceil(rows / ranks)
        rows left ranks without: 9 rows in 3 blocks for 4 ranks), or one a row where ranks
        outnumber rows (a block of 2 rows went whole to one of 3 ranks); a block may start
        or end inside a row group, read whole by each of its blocks."""
        rows = np.unique(self.num_rows * np.arange(self.world_size + 1, dtype=np.int64) // self.world_size)
        if self.row_groups is None:
            return rows, np.arange(len(rows) - 1), np.arange(1, len(rows))
        group_start = np.concatenate([[0], np.cumsum(self.row_groups, dtype=np.int64)])
        first = np.searchsorted(group_start, rows[:-1], side="right") - 1  # the group holding a block's first row
        end = np.searchsorted(group_start, rows[1:] - 1, side="right")  # after the one holding its last row
        return rows, first, end

    def _blocks_of(self, span: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.row_groups is None:
            rows = np.append(np.arange(0, self.num_rows, span, dtype=np.int64), self.num_rows)
            if not self.num_rows:
                return np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
            return rows, np.arange(len(rows) - 1), np.arange(1, len(rows))
        parts = self.row_group_partitions
        rows, first, end = [0], [], []
        size, start = 0, 0  # rows and first row group of the block being filled

        def close(upto: int) -> None:
            nonlocal size
            if size:
                rows.append(rows[-1] + size)
                first.append(start)
                end.append(upto)
                size = 0

        for g, n in enumerate(self.row_groups):
            if not n:
                continue  # an empty row group holds nothing to read
            if size and (size + n > span or (parts is not None and parts[g] != parts[start])):
                close(g)
            if not size:
                start = g
            size += n
        close(len(self.row_groups))
        return np.array(rows, np.int64), np.array(first, np.int64), np.array(end, np.int64)

    @property
    def num_blocks(self) -> int:
        return len(self._block_table[1])

    @cached_property
    def _dealt(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(every block in read order, the rank of each block by id, the deal unit of each
        block by id: itself, or its partition): the same for every shard whatever its
        number of workers."""
        order = np.arange(self.num_blocks)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_blocks)
        if self.row_group_partitions is None:
            unit = np.arange(self.num_blocks)  # each block is dealt alone
        else:  # a partition's blocks go together
            unit = np.array(self.row_group_partitions, np.int64)[self._block_table[1]]
        units = list(dict.fromkeys(unit[order].tolist()))  # in the order their first block comes
        rows = self._unit_rows(unit)
        rank_of = _deal_largest_first(units, rows, self.world_size)
        return order, np.array([rank_of[u] for u in unit.tolist()], np.int64), unit

    def _unit_rows(self, unit: np.ndarray) -> dict[int, int]:
        rows: dict[int, int] = {}
        for u, n in zip(unit.tolist(), np.diff(self._block_table[0]).tolist(), strict=True):
            rows[u] = rows.get(u, 0) + n
        return rows

    @cached_property
    def _rank_rows(self) -> np.ndarray:
        """Rows of every rank."""
        rows = np.zeros(self.world_size, np.int64)
        np.add.at(rows, self._dealt[1], np.diff(self._block_table[0]))
        return rows

    def _pieces_of(self, worker: int, rank: int) -> np.ndarray:
        """(start, stop) log rows of the pieces of blocks a worker of a rank reads, in
        order. Without partitions the rank's rows, its blocks in dealt order, are cut into
        one run per worker of a whole number of batches (the last run shorter): a rank
        yields as many batches of the same rows whatever its number of workers, and a
        block is split between two workers at most once per worker. With partitions, whole
        partitions go to the worker with the fewest rows so far: a worker maps the
        segments of its own partitions only."""
        order, rank_of, unit = self._dealt
        bounds = self._block_table[0]
        mine = order[rank_of[order] == rank]
        if self.row_group_partitions is not None:
            units = list(dict.fromkeys(unit[mine].tolist()))
            worker_of = _deal(units, self._unit_rows(unit), self.num_workers)
            mine = mine[np.array([worker_of[u] == worker for u in unit[mine].tolist()], bool)]
            return np.stack([bounds[mine], bounds[mine + 1]], axis=1).reshape(-1, 2)
        sizes = bounds[mine + 1] - bounds[mine]
        at = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # each block's place in the rank's rows
        run = -(-int(at[-1]) // self.num_workers)
        run = -(-run // self.batch_size) * self.batch_size
        lo, hi = min(worker * run, int(at[-1])), min((worker + 1) * run, int(at[-1]))
        keep = (at[1:] > lo) & (at[:-1] < hi)
        starts = bounds[mine[keep]] + np.maximum(lo - at[:-1][keep], 0)
        stops = bounds[mine[keep]] + np.minimum(hi, at[1:][keep]) - at[:-1][keep]
        return np.stack([starts, stops], axis=1).reshape(-1, 2)

    @cached_property
    def pieces(self) -> np.ndarray:
        """This shard's (start, stop) log rows, in the order it reads them."""
        return self._pieces_of(self.worker, self.rank)

    @cached_property
    def windows(self) -> list[np.ndarray]:
        """This shard's pieces (indices into ``pieces``) grouped into windows of at least
        ``window_rows`` rows (but the last)."""
        out, current, size = [], [], 0
        for k, (a, b) in enumerate(self.pieces.tolist()):
            current.append(k)
            size += b - a
            if size >= self.window_rows:
                out.append(np.array(current, np.int64))
                current, size = [], 0
        if current:
            out.append(np.array(current, np.int64))
        return out

    @cached_property
    def _window_starts(self) -> np.ndarray:
        sizes = [int(np.diff(self.pieces[w], axis=1).sum()) for w in self.windows]
        return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)

    @property
    def num_rows_shard(self) -> int:
        """Rows this shard holds (before ``drop_last``)."""
        return int(self._window_starts[-1])

    # ------------------------------------------------------------ batch counts

    def _batches_of(self, rows: np.ndarray | int) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    @cached_property
    def _even(self) -> int:
        """The batches every rank yields under ``even_batches``, from what does not depend
        on any rank's number of workers (hosts with other CPU counts run other numbers):
        without partitions a rank yields batches of its rows whatever its workers; with
        them, at least one per whole batch of each of its partitions (or, without
        ``drop_last``, of all its rows), however they are dealt."""
        if self.row_group_partitions is None or not self.drop_last:
            return int(self._batches_of(self._rank_rows).min())
        _, rank, unit = self._dealt
        rank_of = dict(zip(unit.tolist(), rank.tolist(), strict=True))  # a partition's blocks share a rank
        full = np.zeros(self.world_size, np.int64)
        for u, n in self._unit_rows(unit).items():
            full[rank_of[u]] += n // self.batch_size
        return int(full.min())

    def _worker_batches(self, rank: int) -> tuple[list[int], list[int]]:
        """(rows, batches) of each of a rank's workers (if it runs this shard's number).
        Under ``even_batches`` a rank with more than ``_even`` drops its last ones: the end
        of its rows (its last workers' last batches, the same rows whatever its number of
        workers), or with partitions the last batch of the worker whose last batch is
        smallest, the short ones first."""
        rows = [int(np.diff(self._pieces_of(w, rank), axis=1).sum()) for w in range(self.num_workers)]
        counts = self._batches_of(np.array(rows)).tolist()
        if not self.even_batches or self.world_size == 1:
            return rows, counts
        for _ in range(sum(counts) - self._even):
            if self.row_group_partitions is None:
                w = max(w for w in range(self.num_workers) if counts[w])
            else:
                w = min((w for w in range(self.num_workers) if counts[w]),
                        key=lambda w: (min(self.batch_size, rows[w] - (counts[w] - 1) * self.batch_size), -w))
            counts[w] -= 1
        return rows, counts

    @cached_property
    def num_batches(self) -> int:
        return self._worker_batches(self.rank)[1][self.worker]

    def even_steps(self, size: int) -> int | None:
        """Under ``even_batches``, how many batches of ``size`` rows joined from the loader's
        (``rebatch``) every rank can make this epoch: ranks yield as many batches but not as
        many rows (a rank's last batch may be short), so the joined batches' counts differed
        and, under DistributedDataParallel, a rank with one more waited forever (s37C). None
        where they agree anyway (one rank, no ``even_batches``, ``drop_last``: full batches)."""
        if not self.even_batches or self.world_size == 1 or self.drop_last:
            return None
        if self.row_group_partitions is not None:  # each worker's partitions end in a short batch
            raise SchemaError("rebatch of a copartitioned ExampleDataset with even_batches=True needs drop_last=True: "
                              "without it each worker's partitions end in a short batch, so a rank's rows, and the "
                              "joined batches of them, depend on every rank's num_workers, and ranks would make "
                              "different numbers (a DistributedDataParallel step would wait forever)")
        served = np.minimum(self._rank_rows, self._even * self.batch_size)
        return int((-(-served // size)).min())

    @property
    def rows_left_out(self) -> int:
        """Rows of the log (every rank's) this epoch does not serve, by ``drop_last`` and
        ``even_batches``; with partitions, as if every rank ran this shard's number of workers."""
        if self.row_group_partitions is None:
            served = np.minimum(self._batches_of(self._rank_rows) * self.batch_size, self._rank_rows)
            if self.even_batches and self.world_size > 1:
                served = np.minimum(served, self._even * self.batch_size)
            return self.num_rows - int(served.sum())
        served = sum(min(n * self.batch_size, m) for r in range(self.world_size)
                     for m, n in zip(*self._worker_batches(r), strict=True))
        return self.num_rows - served

    def ranges_of(self, window: int) -> list[tuple[int, int]]:
        """The (start, stop) log rows of a window's pieces, in read order."""
        return [(int(a), int(b)) for a, b in self.pieces[self.windows[window]].tolist()]

    def window_rows_of(self, window: int) -> np.ndarray:
        """The log rows of a window, in read order (its pieces' rows, piece after piece)."""
        return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in self.ranges_of(window)])

    def row_groups_of(self, window: int) -> list[int]:
        """The Parquet row groups of a window, in read order (needs ``row_groups``)."""
        return list(dict.fromkeys(g for groups, _, _ in self.reads_of(window) for g in groups))

    def reads_of(self, window: int) -> list[tuple[list[int], int, int]]:
        """How to read a window: per piece, the Parquet row groups holding it, and the
        rows of them to keep (skip, take): all of them, but for part of a row group
        (needs ``row_groups``)."""
        if self.row_groups is None:
            raise SchemaError("this plan was made without row_groups")
        group_start = np.concatenate([[0], np.cumsum(self.row_groups, dtype=np.int64)])
        out = []
        for a, b in self.ranges_of(window):
            first = int(np.searchsorted(group_start, a, side="right")) - 1  # the group holding row a
            end = int(np.searchsorted(group_start, b - 1, side="right"))  # after the one holding row b - 1
            out.append((list(range(first, end)), a - int(group_start[first]), b - a))
        return out

    # ------------------------------------------------------------ order and batches

    def order(self, window: int, user: np.ndarray | None = None,
              request_ts: np.ndarray | None = None) -> np.ndarray:
        """Positions of a window's rows (in read order) in the order they are served.

        ``user`` and ``request_ts`` (one per row of the window, in read order) are needed
        with ``affinity`` only.
        """
        size = int(self._window_starts[window + 1] - self._window_starts[window])
        first = int(self.pieces[self.windows[window][0], 0])  # the window's first log row: no other's
        if self.shuffle:
            perm = np.random.default_rng([self.seed, self.epoch, first, 1]).permutation(size)
        else:
            perm = np.arange(size)
        if not self.affinity:
            return perm
        if user is None or request_ts is None or len(user) != size or len(request_ts) != size:
            raise SchemaError(f"affinity needs user and request_ts for each of the window's {size} rows")
        user = np.asarray(user, np.int64)[perm]
        salt = np.zeros(1, np.uint64)
        for part in (self.seed, self.epoch, first):  # users come in a new order each window
            salt = _mix(salt ^ np.uint64(part))
        hashed = _mix(user.view(np.uint64) ^ salt)
        return perm[np.lexsort((np.asarray(request_ts)[perm], user, hashed))]

    def slices(self, start: int = 0) -> Iterator[list[tuple[int, int, int]]]:
        """For each batch from batch ``start`` on: its ``(window, lo, hi)`` parts, each
        ``order(window)[lo:hi]``."""
        n = self.num_batches
        if not is_integer(start) or not 0 <= start <= n:
            raise SchemaError(f"cannot resume at batch {start!r}: this shard has {n} batches")
        starts = self._window_starts
        end_of_shard = self.num_rows_shard
        for i in range(int(start), n):
            pos, end = i * self.batch_size, min((i + 1) * self.batch_size, end_of_shard)
            w = int(np.searchsorted(starts, pos, side="right")) - 1
            parts = []
            while pos < end:
                hi = min(end, int(starts[w + 1]))
                parts.append((w, pos - int(starts[w]), hi - int(starts[w])))
                pos, w = hi, w + 1
            yield parts

    def batches(self, start: int = 0,
                keys: Keys | tuple[Sequence[int], Sequence[int]] | None = None) -> Iterator[np.ndarray]:
        """The log rows of each batch from batch ``start`` on.

        With ``affinity``, ``keys`` gives (user, request_ts) either as two arrays over
        the whole log or as a function of an array of rows (read what you need).
        """
        if self.affinity and keys is None:
            raise SchemaError("affinity needs keys: (user_id, request_ts) arrays or a function of rows")
        if keys is not None and not callable(keys):
            user_all, ts_all = (np.asarray(k) for k in keys)

            def keys(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                return user_all[rows], ts_all[rows]
        current: tuple[int, np.ndarray, np.ndarray] | None = None
        for parts in self.slices(start):
            out = []
            for w, lo, hi in parts:
                if current is None or current[0] != w:
                    rows = self.window_rows_of(w)
                    current = (w, rows, self.order(w, *(keys(rows) if self.affinity else (None, None))))
                out.append(current[1][current[2][lo:hi]])
            yield np.concatenate(out)


def _uneven(sizes: np.ndarray, ranks: int) -> bool:
    """Whether blocks of ``sizes`` rows, dealt as ``_dealt`` deals them
    (``_deal_largest_first``), leave the ranks more than ``RANK_SPREAD`` of
    an even share apart (or some rank without rows)."""
    if ranks == 1:
        return False
    if len(sizes) < ranks:
        return True
    dealt = _deal_largest_first(list(range(len(sizes))), dict(enumerate(sizes.tolist())), ranks)
    rows = np.zeros(ranks, np.int64)
    np.add.at(rows, list(dealt.values()), sizes[list(dealt)])
    return int(rows.max() - rows.min()) > RANK_SPREAD * int(sizes.sum()) / ranks


def _deal_largest_first(units: list[int], rows: dict[int, int], bins: int) -> dict[int, int]:
    """``_deal`` of ``units``, the largest first (ties in their order): each rank's rows are
    then the same in every epoch; dealt in read order, a later epoch left a rank short of a
    batch, and under even_batches every rank got none (a stranger's)."""
    return _deal(sorted(units, key=lambda u: -rows[u]), rows, bins)


def _deal(units: list[int], rows: dict[int, int], bins: int) -> dict[int, int]:
    """Each unit, in order, to the bin with the fewest rows so far (the lowest on ties)."""
    load = [(0, b) for b in range(bins)]
    dealt = {}
    for u in units:
        n, b = heapq.heappop(load)
        dealt[u] = b
        heapq.heappush(load, (n + rows[u], b))
    return dealt


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a cheap, well-spread 64-bit hash of each value."""
    x = np.asarray(x, np.uint64).copy()
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x

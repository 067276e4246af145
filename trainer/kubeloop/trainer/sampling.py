"""Training data read in batches: only the columns a run needs, in compact types, and
optionally a sample of at most ``maxRows`` rows drawn while the data streams.

The sample is a reservoir (Vitter's algorithm R) per class of the target for
classification, one for regression, each of at most ``maxRows`` rows; at the end the
classes share ``maxRows`` in proportion to how often they occurred (largest
remainders), each class keeping at least one row when there is room. Every class draws
from a generator seeded by the seed and the class, one draw per row in row order, so
the sample depends on the seed and the data, not on how the data was split in batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from kubeloop.trainer import stream
from kubeloop.trainer.data import Format
from kubeloop.trainer.errors import DataError


def _class_seed(seed: int, key: Any) -> list[int]:
    """A generator seed for one class: the run's seed and a stable hash of the label."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return [seed, int.from_bytes(digest[:8], "little")]


@dataclass
class _Reservoir:
    """At most ``capacity`` rows, a uniform sample of the rows seen."""

    capacity: int
    rng: np.random.Generator
    table: pa.Table | None = None
    seen: int = 0

    def add(self, part: pa.Table) -> None:
        rows = part.num_rows
        held = 0 if self.table is None else self.table.num_rows
        fill = min(rows, max(0, self.capacity - self.seen))
        slots = np.concatenate([np.arange(held), held + np.arange(fill)])
        if rows > fill:
            seen = self.seen + np.arange(fill, rows)
            draws = self.rng.integers(0, seen + 1)
            keep = draws < self.capacity
            targets, sources = draws[keep][::-1], (held + np.arange(fill, rows))[keep][::-1]
            unique, first = np.unique(targets, return_index=True)  # the last row wins a slot
            slots[unique] = sources[first]
        self.seen += rows
        both = part if self.table is None else pa.concat_tables([self.table, part])
        self.table = both.take(pa.array(slots, type=pa.int64()))


@dataclass
class Sampler:
    """Reservoirs per class (``target`` given) or one for every row (``target`` None)."""

    max_rows: int
    seed: int
    target: str | None
    groups: dict[Any, _Reservoir] = field(default_factory=dict)

    def add(self, part: pa.Table) -> None:
        if self.target is None:
            self._group(None).add(part)
            return
        labels = part.column(self.target)
        for key in sorted(pc.unique(labels).to_pylist(), key=lambda k: (k is None, repr(k))):
            mask = pc.is_null(labels) if key is None else pc.equal(labels, key)
            self._group(key).add(part.filter(pc.fill_null(mask, False)))

    def _group(self, key: Any) -> _Reservoir:
        if key not in self.groups:
            rng = np.random.default_rng(_class_seed(self.seed, key))
            self.groups[key] = _Reservoir(self.max_rows, rng)
        return self.groups[key]

    def result(self) -> pa.Table | None:
        keys = sorted(self.groups, key=lambda k: (k is None, repr(k)))
        tables = [self.groups[k].table for k in keys]
        quotas = shares(self.max_rows, [self.groups[k].seen for k in keys])
        rng = np.random.default_rng(self.seed)
        parts = []
        for table, quota in zip(tables, quotas, strict=True):
            if table is None or quota == 0:
                continue
            pick = np.sort(rng.choice(table.num_rows, size=quota, replace=False))
            parts.append(table.take(pa.array(pick, type=pa.int64())))
        return pa.concat_tables(parts) if parts else None


def shares(total: int, counts: list[int]) -> list[int]:
    """``total`` rows shared in proportion to ``counts`` (largest remainders, ties to the
    first), every non-empty class at least one row while there is room; never more than
    a class has."""
    if sum(counts) <= total:
        return list(counts)
    exact = [total * c / sum(counts) for c in counts]
    quotas = [min(c, max(1 if c else 0, int(e))) for c, e in zip(counts, exact, strict=True)]
    order = sorted(range(len(counts)), key=lambda i: (-(exact[i] - int(exact[i])), i))
    while sum(quotas) > total:  # the at-least-one rule overshot: take from the largest
        largest = max(range(len(quotas)), key=lambda i: (quotas[i], i))
        quotas[largest] -= 1
    for i in order * 2:
        if sum(quotas) >= total:
            break
        if quotas[i] < counts[i]:
            quotas[i] += 1
    return quotas


def _compact(batch: pa.RecordBatch, keep_exact: Iterable[str]) -> pa.Table:
    """float64 columns as float32 and text as categories, except ``keep_exact``."""
    exact = set(keep_exact)
    arrays, names = [], []
    for name, array in zip(batch.schema.names, batch.columns, strict=True):
        if name not in exact and pa.types.is_float64(array.type):
            array = pc.cast(array, pa.float32())
        elif name not in exact and pa.types.is_string(array.type):
            array = pc.dictionary_encode(array)
        arrays.append(array)
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def read_training(
    uri: str,
    fmt: Format,
    columns: list[str] | None,
    target: str,
    sampling: tuple[int, int, bool] | None = None,
    batch_rows: int = stream.BATCH_ROWS,
) -> tuple[pd.DataFrame, str]:
    """The columns a run needs (``columns``, None: all) and the whole data's content
    digest; ``sampling`` = (max rows, seed, per class) draws a sample of the rows."""
    digest = stream.Digest()
    sampler = None
    if sampling is not None:
        sampler = Sampler(sampling[0], sampling[1], target if sampling[2] else None)
    kept: list[pa.Table] = []
    for batch in stream.read_batches(uri, fmt, batch_rows=batch_rows):
        digest.update(batch)
        if target not in batch.schema.names:
            raise DataError(f"column {target!r}: the target is missing from the data")
        names = [n for n in batch.schema.names if columns is None or n in columns]
        part = _compact(batch.select(names), keep_exact=[target])
        if sampler is None:
            kept.append(part)
        else:
            sampler.add(part)
    table = sampler.result() if sampler else pa.concat_tables(kept)
    if table is None:
        raise DataError(f"{uri}: the data set is empty")
    return table.to_pandas(), digest.hexdigest()

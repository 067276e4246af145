"""Population stability index (PSI) over a count-based sliding window.

A :class:`DriftWindow` keeps, for every watched column, the bucket of each of the
last ``size`` rows in a ring buffer and the bucket counts beside it. Each new
batch of rows adds its buckets and removes those of the rows it pushes out, so the
cost of an update is proportional to the batch, never to the window. PSI itself
is a sum over buckets, computed when asked for (at scrape time).

Buckets per column:

* numeric — the reference histogram's bins ``[e0, e1), ..., [e_{n-1}, e_n]`` plus an
  underflow bucket (``< e0``), an overflow bucket (``> e_n``) and a missing-value
  bucket (NaN). Values outside the training range are drift, so the open-ended
  buckets have a reference count of zero (smoothed, see :data:`EPSILON`).
* categorical — one bucket per reference category plus one for unseen values.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from kubeloop.driftreport import FeatureDrift

#: Smallest proportion used for a bucket on either side of PSI, so an empty bucket
#: contributes a large but finite term (the usual convention).
EPSILON = 1e-4

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class NumericReference:
    """A numeric column's reference histogram: ``len(edges) == len(counts) + 1``."""

    name: str
    edges: Sequence[float]
    counts: Sequence[float]
    missing: float = 0.0

    def __post_init__(self) -> None:
        if len(self.edges) < 2 or len(self.edges) != len(self.counts) + 1:
            raise ValueError(
                f"{self.name}: a histogram needs n+1 edges for n counts "
                f"(got {len(self.edges)} edges, {len(self.counts)} counts)"
            )
        if any(b < a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"{self.name}: bin edges must not decrease")

    @property
    def buckets(self) -> int:
        # underflow + bins + overflow + missing
        return len(self.counts) + 3

    def expected(self) -> FloatArray:
        return np.array([0.0, *self.counts, 0.0, self.missing], dtype=np.float64)


@dataclass(frozen=True)
class CategoricalReference:
    """A categorical column's reference frequencies (counts or shares)."""

    name: str
    categories: Sequence[str]
    counts: Sequence[float]
    unseen: float = 0.0
    index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.categories) != len(self.counts):
            raise ValueError(f"{self.name}: one count per category is needed")
        object.__setattr__(self, "index", {c: i for i, c in enumerate(self.categories)})

    @property
    def buckets(self) -> int:
        return len(self.categories) + 1  # + unseen

    def expected(self) -> FloatArray:
        return np.array([*self.counts, self.unseen], dtype=np.float64)


Reference = NumericReference | CategoricalReference


def proportions(counts: npt.ArrayLike, eps: float = EPSILON) -> FloatArray:
    """Counts → shares, each at least ``eps`` (an all-zero vector → all ``eps``)."""
    c = np.asarray(counts, dtype=np.float64)
    total = float(c.sum())
    p = c / total if total > 0 else np.zeros_like(c)
    return np.maximum(p, eps)


def psi(expected: npt.ArrayLike, actual: npt.ArrayLike, eps: float = EPSILON) -> float:
    """PSI = Σ (a - e) · ln(a / e) over buckets, on smoothed shares."""
    e = proportions(expected, eps)
    a = proportions(actual, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def numeric_buckets(edges: Sequence[float], values: npt.ArrayLike) -> IntArray:
    """Bucket of each value against histogram ``edges`` (layout as in the module doc)."""
    e = np.asarray(edges, dtype=np.float64)
    x = np.asarray(values, dtype=np.float64)
    idx = np.searchsorted(e, x, side="right").astype(np.int64)
    n = len(e) - 1
    idx[x == e[-1]] = n  # the last bin is closed on the right, as numpy.histogram's
    idx[np.isnan(x)] = n + 2
    return idx


def categorical_buckets(ref: CategoricalReference, values: Sequence[object]) -> IntArray:
    """Bucket of each value: its category's position, or the unseen bucket."""
    unseen = len(ref.categories)
    index = ref.index
    return np.fromiter(
        (index.get(_category_key(v), unseen) for v in values), dtype=np.int64, count=len(values)
    )


def _category_key(value: object) -> str:
    """A value as the profile keys it: its ``str()`` (bytes decoded first)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class DriftWindow:
    """Sliding-window bucket counts for a set of columns, updated incrementally.

    New rows are buffered and bucketed in blocks of ``flush_rows`` (or when read),
    so the fixed cost of the numpy calls is paid once per block rather than once
    per request; reads always see every row added. Thread-safe (one lock).
    """

    def __init__(self, references: Sequence[Reference], size: int, flush_rows: int = 128) -> None:
        if size < 1:
            raise ValueError("window size must be at least 1")
        self.references = tuple(references)
        self.names = tuple(r.name for r in self.references)
        self.size = size
        sizes = [r.buckets for r in self.references]
        self.offsets = np.cumsum([0, *sizes[:-1]]).astype(np.int64)
        self.total_buckets = int(sum(sizes))
        self._expected = [r.expected() for r in self.references]
        self._ring = np.zeros((size, len(self.references)), dtype=np.int64)
        self._counts = np.zeros(self.total_buckets, dtype=np.int64)
        self._pos = 0
        self._filled = 0
        self._lock = threading.Lock()
        self.flush_rows = flush_rows
        self._pending_matrix: list[npt.NDArray[Any]] = []
        self._pending_rows = 0
        # Numeric columns are bucketed together: edges padded to one matrix with +inf.
        self._numeric_cols = [
            i for i, r in enumerate(self.references) if isinstance(r, NumericReference)
        ]
        self._numeric_set = frozenset(self._numeric_cols)
        self._categorical_cols = [
            i for i in range(len(self.references)) if i not in self._numeric_set
        ]
        self._pending_categorical: list[list[Any]] = [[] for _ in self._categorical_cols]
        width = max(
            (len(self.references[i].edges) for i in self._numeric_cols),  # type: ignore[union-attr]
            default=0,
        )
        self._edges = np.full((len(self._numeric_cols), width), np.inf)
        self._last_edge = np.zeros(len(self._numeric_cols))
        self._n_bins = np.zeros(len(self._numeric_cols), dtype=np.int64)
        for j, i in enumerate(self._numeric_cols):
            ref = self.references[i]
            assert isinstance(ref, NumericReference)
            self._edges[j, : len(ref.edges)] = ref.edges
            self._last_edge[j] = ref.edges[-1]
            self._n_bins[j] = len(ref.edges) - 1

    @property
    def rows(self) -> int:
        """Rows currently in the window."""
        self.flush()
        return self._filled

    @property
    def numeric_only(self) -> bool:
        """Every column is numeric (rows can come as one float matrix)."""
        return len(self._numeric_cols) == len(self.references)

    def _bucket_numeric(self, x: FloatArray) -> IntArray:
        """Buckets of an ``(n, k)`` float matrix holding the numeric columns in order."""
        with np.errstate(invalid="ignore"):
            idx = (x[:, :, None] >= self._edges[None, :, :]).sum(axis=2)
        idx[x == self._last_edge[None, :]] -= 1
        idx = np.minimum(idx, self._n_bins[None, :] + 1)  # +inf lands in overflow
        nan = np.isnan(x)
        if nan.any():
            idx[nan] = np.broadcast_to(self._n_bins + 2, idx.shape)[nan]
        result: IntArray = idx.astype(np.int64, copy=False)
        return result

    def update_matrix(self, x: npt.NDArray[Any]) -> None:
        """Add rows given as one ``(n, k)`` float matrix (numeric-only windows)."""
        if not self.numeric_only:
            raise ValueError("update_matrix needs a window of numeric columns only")
        self._append(x, [])

    def update(self, columns: Sequence[npt.ArrayLike | Sequence[object]]) -> None:
        """Add a batch of rows (one column per reference, in reference order)."""
        if not self.references:
            return
        if len(columns) != len(self.references):
            raise ValueError("one column per reference is needed")
        numeric = [
            np.asarray(columns[i], dtype=np.float64).reshape(-1, 1) for i in self._numeric_cols
        ]
        x = (
            np.concatenate(numeric, axis=1)
            if len(numeric) > 1
            else numeric[0]
            if numeric
            else np.empty((len(columns[0]), 0))  # type: ignore[arg-type]
        )
        categorical = [
            _values(columns[i]) for i in range(len(self.references)) if i not in self._numeric_set
        ]
        self._append(x, categorical)

    def update_column(self, values: npt.NDArray[Any]) -> None:
        """Add rows of a one-column window (e.g. the predictions) from a 1-D array."""
        if len(self.references) != 1:
            raise ValueError("update_column needs a window of one column")
        if self._numeric_cols:
            self._append(values.reshape(-1, 1), [])
        else:
            self._append(np.empty((len(values), 0)), [values.tolist()])

    def _append(self, x: npt.NDArray[Any], categorical: list[list[Any]]) -> None:
        with self._lock:
            self._pending_matrix.append(x)
            for store, values in zip(self._pending_categorical, categorical, strict=True):
                store.extend(values)
            self._pending_rows += x.shape[0]
            if self._pending_rows >= self.flush_rows:
                self._flush_locked()

    def flush(self) -> None:
        """Bucket the buffered rows into the window."""
        if self._pending_rows:
            with self._lock:
                self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending_rows:
            return
        pending, self._pending_matrix = self._pending_matrix, []
        x = np.concatenate(pending) if len(pending) > 1 else pending[0]
        local = np.empty((x.shape[0], len(self.references)), dtype=np.int64)
        if self._numeric_cols:
            local[:, self._numeric_cols] = self._bucket_numeric(np.asarray(x, dtype=np.float64))
        for store, i in zip(self._pending_categorical, self._categorical_cols, strict=True):
            ref = self.references[i]
            assert isinstance(ref, CategoricalReference)
            local[:, i] = categorical_buckets(ref, store)
        self._pending_categorical = [[] for _ in self._categorical_cols]
        self._pending_rows = 0
        self._add_locked(local)

    def _add_locked(self, local: IntArray) -> None:
        if local.shape[0] == 0:
            return
        if local.shape[0] > self.size:
            local = local[-self.size :]
        flat = local + self.offsets[None, :]
        n = flat.shape[0]
        positions = (self._pos + np.arange(n)) % self.size
        evicted = max(0, self._filled + n - self.size)
        if evicted:
            # occupied slots among those being overwritten: the last `evicted` ones
            old = self._ring[positions[n - evicted :]]
            self._counts -= np.bincount(old.ravel(), minlength=self.total_buckets)
        self._ring[positions] = flat
        self._counts += np.bincount(flat.ravel(), minlength=self.total_buckets)
        self._pos = int((self._pos + n) % self.size)
        self._filled = min(self.size, self._filled + n)

    def counts(self) -> list[IntArray]:
        """Current bucket counts per column."""
        with self._lock:
            self._flush_locked()
            c = self._counts.copy()
        return [c[o : o + r.buckets] for o, r in zip(self.offsets, self.references, strict=True)]

    def scores(self) -> dict[str, float]:
        """PSI per column against its reference (0.0 while the window is empty)."""
        if self.rows == 0:
            return dict.fromkeys(self.names, 0.0)
        return {
            name: psi(expected, actual)
            for name, expected, actual in zip(
                self.names, self._expected, self.counts(), strict=True
            )
        }


def _values(column: Any) -> list[Any]:
    if isinstance(column, np.ndarray):
        values: list[Any] = column.reshape(-1).tolist()
        return values
    return list(column)


def max_score(scores: Mapping[str, float]) -> float:
    """The drift score of a model: the largest per-column PSI (0.0 for none)."""
    return max((s for s in scores.values() if not math.isnan(s)), default=0.0)


#: most buckets a drift-report entry shows (the smallest categories beyond it are summed)
MAX_REPORT_BUCKETS = 40


def bucket_labels(ref: Reference) -> list[str]:
    """A label per bucket, in the window's layout (see the module doc)."""
    if isinstance(ref, CategoricalReference):
        return [*ref.categories, "(unseen)"]
    e = [f"{v:.4g}" for v in ref.edges]
    bins = [f"[{a}, {b})" for a, b in itertools.pairwise(e)]
    bins[-1] = bins[-1][:-1] + "]"
    return [f"< {e[0]}", *bins, f"> {e[-1]}", "(missing)"]


def _open_buckets(ref: Reference) -> frozenset[int]:
    """The buckets outside the reference's own: under/overflow, missing, unseen."""
    if isinstance(ref, CategoricalReference):
        return frozenset((len(ref.categories),))
    n = len(ref.counts)
    return frozenset((0, n + 1, n + 2))


def feature_drift(ref: Reference, counts: npt.ArrayLike, threshold: float) -> FeatureDrift:
    """One column of the drift report: shares per bucket and PSI, from the same counts
    the gauges use (0.0 while the window is empty). Open-ended buckets that neither side
    has a row in are left out: they would only be empty bars."""
    live = np.asarray(counts, dtype=np.float64)
    expected = ref.expected()
    score = psi(expected, live) if live.sum() > 0 else 0.0
    ref_share, live_share = _shares(expected), _shares(live)
    labels = bucket_labels(ref)
    keep = [
        i
        for i in range(len(labels))
        if i not in _open_buckets(ref) or expected[i] > 0 or live[i] > 0
    ]
    bins, reference, live_shares = fold_buckets(
        [labels[i] for i in keep],
        [float(ref_share[i]) for i in keep],
        [float(live_share[i]) for i in keep],
    )
    return FeatureDrift(
        name=ref.name,
        kind="numeric" if isinstance(ref, NumericReference) else "categorical",
        bins=bins,
        reference=reference,
        live=live_shares,
        score=score,
        threshold=threshold,
        drifted=score > threshold,
    )


def fold_buckets(
    labels: list[str], reference: list[float], live: list[float], limit: int = MAX_REPORT_BUCKETS
) -> tuple[list[str], list[float], list[float]]:
    """At most ``limit`` buckets: the largest (by the larger of the two shares) in their
    order, the rest summed into one ``(N others)`` bucket — a column of thousands of
    categories stays one readable chart. The score is computed before, on every bucket."""
    if len(labels) <= limit:
        return labels, reference, live
    by_size = sorted(range(len(labels)), key=lambda i: -max(reference[i], live[i]))
    top, rest = sorted(by_size[: limit - 1]), by_size[limit - 1 :]
    return (
        [*(labels[i] for i in top), f"({len(rest)} others)"],
        [*(reference[i] for i in top), sum(reference[i] for i in rest)],
        [*(live[i] for i in top), sum(live[i] for i in rest)],
    )


def _shares(counts: FloatArray) -> FloatArray:
    total = float(counts.sum())
    return counts / total if total > 0 else np.zeros_like(counts)


def window_report(window: DriftWindow, threshold: float) -> list[FeatureDrift]:
    """Every column of ``window`` as a report entry (one consistent read of its counts)."""
    counts = window.counts()
    return [
        feature_drift(ref, c, threshold) for ref, c in zip(window.references, counts, strict=True)
    ]

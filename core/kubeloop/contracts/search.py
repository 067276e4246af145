"""A search across pods: the trial files its shards write and the winner they make.

With ``spec.search.parallelism`` the trials of a search run as an Indexed Job: shard
``i`` of ``n`` cross-validates candidates ``i, i + n, i + 2n, …`` of the same
deterministic candidate list the in-process search tries, on the same folds, and writes
one :class:`Trial` per candidate to ``<search dir>/trials/<index>.json``. Results go to
the store because they outgrow a termination message. A rerun (a lost pod's
replacement) overwrites the same files, so a trial is never recorded twice.

The operator (no scikit-learn there) reads the files to show progress and the winner;
the trainer that refits the winner reads them too. Both pick it with :func:`winner`,
which ranks the way scikit-learn's search does: the highest mean score wins, a tie
goes to the lower candidate index, a failed candidate (no score) ranks last.
"""

from __future__ import annotations

import math
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from kubeloop.api.v1alpha1 import LOWER_IS_BETTER, Search
from kubeloop.contracts.artifacts import join

#: The folder, under a search's directory, that holds one file per trial.
TRIALS_DIR: Final = "trials"
#: The environment variable the Job controller gives each pod of an Indexed Job.
SHARD_ENV: Final = "JOB_COMPLETION_INDEX"


def trials_dir(search_dir: str) -> str:
    """The folder of a search's trial files."""
    return join(search_dir, TRIALS_DIR)


def trial_uri(search_dir: str, index: int) -> str:
    """Candidate ``index``'s trial file (zero-padded, so names sort as numbers)."""
    return join(trials_dir(search_dir), f"{index:05d}.json")


def candidate_count(search: Search) -> int:
    """How many candidates the search tries: the whole grid, or as many random ones as
    asked for (scikit-learn draws no more than the grid holds)."""
    size = math.prod(len(values) for values in search.space.values())
    return size if search.strategy == "grid" else min(search.trials, size)


def shard_pods(search: Search) -> int:
    """The pods a parallel search runs on: no more than it has candidates."""
    return max(1, min(search.parallelism or 1, candidate_count(search)))


def shard_indexes(shard: int, shards: int, total: int) -> range:
    """The candidates shard ``shard`` of ``shards`` cross-validates."""
    return range(shard, total, shards)


def default_metric(task: str) -> str:
    """The metric a search ranks by when the spec names none."""
    return "accuracy" if task == "classification" else "r2"


class Trial(BaseModel):
    """One candidate's cross-validation, as a shard wrote it."""

    model_config = ConfigDict(extra="ignore")

    index: int = Field(ge=0, description="The candidate's place in the search's list.")
    params: dict[str, Any] = Field(description="The searched parameters' values.")
    metric: str = Field(description="The metric ranked by.")
    folds: list[float | None] = Field(description="The scorer's value on each fold.")
    score: float | None = Field(
        description="The mean of the scorer's values (higher is better, as scikit-learn's "
        "scorers give it: a lower-is-better metric negated); None: the candidate failed."
    )

    @property
    def value(self) -> float | None:
        """The mean score as the metric itself (never negated)."""
        if self.score is None:
            return None
        return -self.score if self.metric in LOWER_IS_BETTER else self.score


def ranks(trials: list[Trial]) -> list[int]:
    """Each trial's rank as scikit-learn gives it: 1 + how many scored better (ties share
    the lowest rank; failed trials tie below every scored one)."""
    scores = [-math.inf if t.score is None else t.score for t in trials]
    return [1 + sum(other > mine for other in scores) for mine in scores]


def winner(trials: list[Trial]) -> Trial | None:
    """The best trial: highest score, the lowest index among equals; None if none scored."""
    scored = [t for t in sorted(trials, key=lambda t: t.index) if t.score is not None]
    if not scored:
        return None
    best = max(t.score for t in scored if t.score is not None)
    return next(t for t in scored if t.score == best)


def missing(trials: list[Trial], total: int) -> list[int]:
    """The candidate indexes no trial file covers yet."""
    have = {t.index for t in trials}
    return [i for i in range(total) if i not in have]

"""A TrainingJob's search across pods (``spec.search.parallelism``), before its trainer Job.

The search's trials run as an Indexed Job (:func:`builders.build_search_job`); each pod
writes its trials to the store (:mod:`kubeloop.contracts.search`). The operator only
reads them: it counts them while the Job runs (``status.search.done``), and once the Job
has completed it reads them all, picks the winner the way the trainer will and hands the
trainer Job ``--trials``: the winner is refitted and exported once, with no search.
A failed search Job fails the TrainingJob; nothing is published, so the model being
served stays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kubeloop.api.v1alpha1 import SearchStatus, SearchWinner, TrainingJobSpec
from kubeloop.contracts import search as contract
from kubeloop.operator import builders, metrics
from kubeloop.operator.handlers.common import Context, Reconcile
from kubeloop.operator.handlers.jobs import job_state, outcome
from kubeloop.operator.store import count_json, list_json
from kubeloop.operator.timestamps import now

#: Ends the TrainingJob without a model: (rec, phase, reason code, message).
End = Callable[[Reconcile, str, str, str], None]


def parallel(spec: TrainingJobSpec) -> bool:
    """Whether the spec asks for its search to run across pods."""
    return spec.search is not None and spec.search.parallelism is not None


@dataclass(frozen=True)
class Verdict:
    """What the trials of a completed search say: the winner, or why there is none."""

    winner: contract.Trial | None
    problem: str | None


def judge(trials: list[contract.Trial], total: int) -> Verdict:
    """The winner of a completed search, or why it has none (trials missing, every
    candidate failed). Pure: the same files always give the same verdict."""
    gaps = contract.missing(trials, total)
    if gaps:
        shown = ", ".join(str(i) for i in gaps[:5]) + (", …" if len(gaps) > 5 else "")
        return Verdict(None, f"{len(gaps)} of {total} trials missing from the store ({shown})")
    best = contract.winner(trials)
    if best is None:
        return Verdict(None, f"every one of the {total} candidates failed to fit")
    return Verdict(best, None)


def progress(
    job_name: str, spec: TrainingJobSpec, done: int, best: contract.Trial | None = None
) -> dict[str, Any]:
    """``status.search``: the Job, the pods, trials done of the total, the winner."""
    search = spec.search
    if search is None:  # pragma: no cover - only called for a search
        raise ValueError("no spec.search")
    status = SearchStatus(
        job_name=job_name,
        pods=contract.shard_pods(search),
        trials=contract.candidate_count(search),
        done=done,
        metric=search.metric or contract.default_metric(spec.task),
        winner=SearchWinner(index=best.index, score=best.value, params=best.params)
        if best
        else None,
    )
    return status.to_wire()


def parse_trials(found: list[dict[str, Any]]) -> list[contract.Trial]:
    """The trial files that parse (one being rewritten may not: it is counted later)."""
    trials = []
    for value in found:
        try:
            trials.append(contract.Trial.model_validate(value))
        except ValidationError:
            continue
    return trials


def step(
    ctx: Context,
    rec: Reconcile,
    spec: TrainingJobSpec,
    data_uri: Callable[[], str | None],
    end: End,
) -> list[str] | None:
    """Drive the search Job one pass; the trainer's extra arguments once every trial is
    in, else None (starting, running, or ended here)."""
    name = builders.search_job_name(rec.body)
    job = ctx.kube.read("batch/v1", "Job", rec.namespace, name)
    if job is None:
        _start(ctx, rec, spec, name, data_uri)
        return None
    meta = rec.body["metadata"]
    folder = builders.search_dir_uri(ctx.settings, rec.namespace, meta["name"], meta["uid"])
    state = job_state(job)
    if state == "Running":
        _searching(rec, spec, name, count_json(contract.trials_dir(folder)))
        return None
    trials = parse_trials(list_json(contract.trials_dir(folder)))
    if state == "Failed":
        rec.status["search"] = progress(name, spec, len(trials))
        end(rec, "Failed", "SearchFailed", f"search Job {name}: {outcome(ctx.kube, job).reason}")
        return None
    status = progress(name, spec, len(trials))
    verdict = judge(trials, int(status["trials"]))
    rec.status["search"] = progress(name, spec, len(trials), verdict.winner)
    if verdict.winner is None:
        end(rec, "Failed", "SearchFailed", f"search Job {name} completed, but {verdict.problem}")
        return None
    return ["--trials", folder]


def _start(
    ctx: Context,
    rec: Reconcile,
    spec: TrainingJobSpec,
    name: str,
    data_uri: Callable[[], str | None],
) -> None:
    """Create the search Job once the data version (and any champion) is known."""
    uri = data_uri()
    if uri is None:
        return
    ctx.kube.create(builders.build_search_job(rec.body, spec, uri, ctx.settings))
    metrics.CHILDREN_CREATED.labels(kind="Job").inc()
    status = progress(name, spec, 0)
    rec.info(
        reason="SearchStarted",
        message=f"Job {name}: {status['trials']} trials on {status['pods']} pods, "
        f"data {rec.status.get('datasetVersion')}",
    )
    rec.status.setdefault("startTime", now())
    _searching(rec, spec, name, 0)


def _searching(rec: Reconcile, spec: TrainingJobSpec, name: str, done: int) -> None:
    """The search runs: say how far it is."""
    status = progress(name, spec, done)
    rec.status.update(phase="Running", search=status)
    rec.ready(False, "Searching", f"Job {name}: {done} of {status['trials']} trials done")

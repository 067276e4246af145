"""Scheduled retraining: ``spec.retrain.schedule`` (cron) under the retrain policy's guard rails.

A timer looks for the latest cron tick at or before now. Each tick after the
ModelDeployment was created is decided exactly once (the tick's key goes into
``status.retrainKeys`` whatever the decision), so a restarted operator neither
repeats a tick nor fires every tick it missed: only the latest one.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import kopf
from croniter import croniter

from kubeloop.api.base import GROUP, VERSION
from kubeloop.operator import retrain
from kubeloop.operator.handlers.common import (
    IMPORT_SETTINGS,
    context,
    retry_soon_when_unavailable,
)
from kubeloop.operator.timestamps import parse

log = logging.getLogger("kubeloop.schedule")


def due_tick(schedule: str, created: datetime, now: datetime) -> datetime | None:
    """The latest tick of ``schedule`` at or before ``now`` and after ``created``, if any.

    Raises ValueError for an invalid cron expression.
    """
    if not croniter.is_valid(schedule):
        raise ValueError(f"invalid cron schedule {schedule!r}")
    # croniter's get_prev is strictly before its start: start just after now.
    tick = croniter(schedule, now.astimezone(UTC).replace(microsecond=999_999)).get_prev(datetime)
    assert isinstance(tick, datetime)
    tick = tick.astimezone(UTC)
    return tick if tick > created and tick <= now else None


def _scheduled(spec: kopf.Spec, **_: Any) -> bool:
    return bool((spec.get("retrain") or {}).get("schedule"))


@kopf.timer(
    GROUP,
    VERSION,
    "modeldeployments",
    interval=IMPORT_SETTINGS.schedule_check_seconds,
    initial_delay=1,
    when=_scheduled,
)
def retrain_on_schedule(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    meta = body["metadata"]
    schedule = str((body["spec"].get("retrain") or {}).get("schedule") or "")
    created = parse(meta.get("creationTimestamp"))
    now = datetime.now(UTC)
    try:
        tick = due_tick(schedule, created or now, now)
    except ValueError as exc:
        log.warning("%s/%s: %s", meta["namespace"], meta["name"], exc)
        return
    if tick is None:
        return
    trigger = retrain.Trigger.from_tick(tick)
    if trigger.key in ((body.get("status") or {}).get("retrainKeys") or []):
        return
    ctx = context(memo)
    with retry_soon_when_unavailable(ctx.settings):
        retrain.act(ctx, trigger, meta["namespace"], meta["name"], now)

"""The data plane: what the server does, independent of the wire format.

It validates the model a request names, routes it (its router says stable or canary)
and runs the model on a typed, already-decoded request
(:class:`~kubeloop.serving.tensors.Decoded`), returning the model's outputs. Everything
else is a part it is composed of:

* :class:`~kubeloop.serving.slot.ModelSlot` — the served model: load, verify, hot swap,
  readiness;
* :class:`~kubeloop.serving.router.Router` — which requests the canary gets, canary
  forwarding and shadowing (the transport asks it before decoding; it relays bytes);
* prediction observers — :class:`~kubeloop.serving.feedback.FeedbackRecorder` and, when
  configured, :class:`~kubeloop.serving.observers.PredictionLogger` — told of every
  answered request; the model's own batch observers (drift, histograms) see every
  model call.

A transport (:mod:`kubeloop.serving.rest`) decodes requests, calls these methods and
encodes what they return; a client mistake is a raised
:class:`~kubeloop.serving.errors.ServingError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Sequence
from typing import Any

from kubeloop.driftreport import DriftReport
from kubeloop.serving.auth import WriteGuard
from kubeloop.serving.batching import Outputs
from kubeloop.serving.errors import NotFoundError, ServingError, UnavailableError
from kubeloop.serving.feedback import FeedbackRecorder
from kubeloop.serving.metrics import DriftSnapshot, Metrics, OnlineSnapshot
from kubeloop.serving.model import LoadedModel
from kubeloop.serving.observers import PredictionLogger, PredictionObserver
from kubeloop.serving.peers import FeedbackPeers
from kubeloop.serving.router import Router
from kubeloop.serving.settings import ServingSettings
from kubeloop.serving.slot import ModelSlot
from kubeloop.serving.tensors import Decoded

#: seconds of the shutdown budget kept for the process to exit after the sinks
EXIT_MARGIN_S = 0.5


class DataPlane:
    """Validates, routes and infers; owns the parts that do the rest."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.limits = settings.request_limits()
        #: the token rule of the write routes (the front's feedback budget checks it too)
        self.guard = WriteGuard.from_settings(settings)
        self.metrics = Metrics(drift=self._drift_snapshot, online=self._online_snapshot)
        self.feedback = FeedbackRecorder(settings, metrics=self.metrics)
        self.slot = ModelSlot(settings, self.metrics, on_swap=self.feedback.on_model)
        self.router = Router(settings, self.metrics, self.slot)
        #: the deployment's other pods, for feedback on requests they answered
        self.peers: FeedbackPeers | None = None
        if settings.feedback_peers:
            own = (settings.pod_ip, settings.port) if settings.pod_ip else None
            self.peers = FeedbackPeers(
                settings.feedback_peers, own, settings.feedback_forward_timeout
            )
        self.prediction_log: PredictionLogger | None = None
        observers: list[PredictionObserver] = [self.feedback]
        if settings.prediction_log:
            self.prediction_log = PredictionLogger(settings, self.metrics, self.slot.name)
            observers.append(self.prediction_log)
        self._observers = tuple(observers)
        self._slot_task: asyncio.Task[None] | None = None
        self.shutdown_deadline: float | None = None
        self._id_prefix = f"{os.getpid():x}-{random.getrandbits(32):08x}-"
        self._id_counter = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.prediction_log is not None:
            self.prediction_log.start()
        self.router.start()
        self._slot_task = asyncio.get_running_loop().create_task(self.slot.run())

    async def stop(self) -> None:
        self.slot.ready = False
        if self._slot_task is not None:
            self._slot_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._slot_task
        await self.router.stop()
        if self.peers is not None:
            await self.peers.close()
        self.feedback.close()
        if self.prediction_log is not None:
            await asyncio.to_thread(self.prediction_log.close, self._flush_timeout())
        self.slot.close()

    def begin_shutdown(self, deadline: float | None = None) -> None:
        """SIGTERM: stop reporting ready (requests are still served while draining).
        ``deadline`` (``time.monotonic()``) is when the process must have exited."""
        self.shutdown_deadline = deadline
        self.slot.begin_shutdown()

    def _flush_timeout(self) -> float:
        """Seconds the prediction log may spend writing what is queued: what is left of
        the shutdown budget less a margin to exit, or at most 5 without one."""
        if self.shutdown_deadline is None:
            return min(5.0, self.settings.shutdown_timeout)
        return max(0.0, self.shutdown_deadline - time.monotonic() - EXIT_MARGIN_S)

    # ------------------------------------------------------------------- validate

    def model(self, name: str, version: str | None = None) -> LoadedModel:
        """The loaded model a request names: 404 for another name or version, 503 while
        none is loaded."""
        model = self.slot.model
        if model is None:
            if self.settings.name is not None and name != self.settings.name:
                raise NotFoundError(f"unknown model '{name}'")
            raise UnavailableError(f"model '{name}' is not loaded yet")
        if name != model.name:
            raise NotFoundError(f"unknown model '{name}'; this server serves '{model.name}'")
        if version is not None and version != model.version:
            raise NotFoundError(
                f"model '{name}' has no version '{version}'; the loaded version is "
                f"'{model.version}'"
            )
        return model

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self.model(name, version)
        except ServingError:
            return False
        return self.slot.ready

    # ---------------------------------------------------------------------- infer

    async def infer(
        self,
        model: LoadedModel,
        request: Decoded,
        request_id: str,
        started: float,
        linger: bool = False,
    ) -> Outputs:
        """Run ``model`` on a validated request and tell the prediction observers.
        ``started`` is the request's ``time.perf_counter()`` at arrival; ``linger``: it
        may wait for company in the batcher (gRPC's requests do)."""
        outputs = await model.infer(model.feed(request), request.rows, linger)
        for observer in self._observers:
            observer.on_prediction(model, request, request_id, outputs, started)
        return outputs

    def log_feedback(self, model: LoadedModel, items: Sequence[tuple[str, Any]]) -> None:
        """Write accepted feedback items to the prediction log, when there is one (queued:
        never waits for the sink)."""
        if self.prediction_log is not None:
            self.prediction_log.on_feedback(model.name, items)

    def new_request_id(self) -> str:
        """An id for a request that brought none: unique per process start."""
        self._id_counter += 1
        return f"{self._id_prefix}{self._id_counter}"

    # --------------------------------------------------------- model repository

    def server_metadata(self) -> dict[str, Any]:
        from kubeloop.cli import package_version

        return {
            "name": "kubeloop",
            "version": package_version(),
            "extensions": ["binary_tensor_data", "model_repository"],
        }

    def repository_index(self) -> list[dict[str, str]]:
        """The served model (READY) and, after a failed load, the refused content
        (UNAVAILABLE with the reason); only UNAVAILABLE while none is served."""
        slot = self.slot
        model = slot.model
        entries: list[dict[str, str]] = []
        if model is not None:
            entries.append(
                {"name": model.name, "version": model.version, "state": "READY", "reason": ""}
            )
        if model is None or slot.last_load_error is not None:
            reason = slot.not_ready_reason() if model is None else slot.last_load_error
            entries.append({"name": slot.name, "state": "UNAVAILABLE", "reason": reason or ""})
        return entries

    def _served(self, name: str) -> None:
        """404 unless ``name`` is the model this server serves (or served before an unload)."""
        slot = self.slot
        served = slot.model.name if slot.model is not None else slot.name
        known = slot.model is not None or slot.unloaded or self.settings.name is not None
        if known and name != served:
            raise NotFoundError(f"unknown model '{name}'; this server serves '{served}'")

    async def load(self, name: str) -> LoadedModel:
        """Reload the model ``name`` from its location now."""
        self._served(name)
        return await self.slot.load()

    async def unload(self, name: str) -> None:
        """Unload the model ``name``: the server reports not ready until the next load."""
        self._served(name)
        await self.slot.unload()

    def drift_report(self, name: str) -> DriftReport:
        """The served model's drift report from this process's windows; 404 when drift
        is not watched (drift off, no ``profile.json``, or no profiled feature served)."""
        model = self.model(name)
        report = None
        if model.drift is not None:
            report = model.drift.report(model.name, model.version, self.settings.drift_threshold)
        if report is None:
            raise NotFoundError(
                f"model '{name}' has no drift report: drift monitoring is off (no profile.json "
                "beside the model, no profiled feature watched, or KUBELOOP_SERVING_DRIFT=false)"
            )
        return report

    # ----------------------------------------------------------- scrape gauges

    def _drift_snapshot(self) -> DriftSnapshot | None:
        model = self.slot.model
        if model is None or model.drift is None:
            return None
        return model.drift.snapshot(model.name, model.version, self.settings.drift_threshold)

    def _online_snapshot(self) -> OnlineSnapshot | None:
        return self.feedback.snapshot(self.slot.model)

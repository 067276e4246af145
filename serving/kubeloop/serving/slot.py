"""The model slot: the one model being served, and how a new one replaces it.

A load reads, verifies and warms the new model beside the current one on a worker
thread, then swaps one reference: requests already running keep the model they
started with. A failed load keeps the current model serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from kubeloop.serving.errors import ModelLoadError, ServingError
from kubeloop.serving.metrics import Metrics
from kubeloop.serving.model import (
    ArtifactError,
    DigestMismatchError,
    LoadedModel,
    fingerprint,
    load_model,
)
from kubeloop.serving.settings import ServingSettings

log = logging.getLogger("kubeloop.serving")

#: seconds after a model swap before long-lived objects are frozen again
RELOAD_GRACE_S = 5.0


class ModelSlot:
    """Holds the served model and the server's readiness; loads, verifies and hot-swaps.

    ``on_swap`` callbacks run on the event loop right after a new model is swapped in.
    """

    def __init__(
        self,
        settings: ServingSettings,
        metrics: Metrics,
        on_swap: Callable[[LoadedModel], None] = lambda _: None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model: LoadedModel | None = None
        #: the served name: --name, else model.json's once loaded ("unknown" before)
        self.name = settings.name or "unknown"
        self.ready = False
        self.shutting_down = False
        #: why the last load failed (safe to answer: no paths, no file content)
        self.last_load_error: str | None = None
        #: set by an unload: not ready, and the watcher leaves the location alone
        self.unloaded = False
        self._on_swap = on_swap
        self._fingerprint: str | None = None
        self._lock = asyncio.Lock()
        self._load_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kubeloop-load")
        self._run_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubeloop-run")

    def served_name(self) -> str | None:
        """The loaded model's name (None before the first load)."""
        model = self.model
        return model.name if model is not None else None

    def not_ready_reason(self) -> str:
        if self.last_load_error is not None:
            return self.last_load_error
        if self.unloaded:
            return "model unloaded"
        return "shutting down" if self.shutting_down else "model not loaded yet"

    async def run(self) -> None:
        """Load the model, then watch its location for new content (until cancelled)."""
        with contextlib.suppress(ServingError):  # logged in load(); the watcher retries
            await self.load()
        if self.settings.reload_interval > 0:
            await self._watch()

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        location = self.settings.model
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            try:
                fp = await loop.run_in_executor(self._load_executor, fingerprint, location)
            except Exception as exc:
                log.warning("cannot read the model location %s: %s", location, exc)
                continue
            if fp != self._fingerprint and not self.unloaded:
                with contextlib.suppress(ServingError):
                    await self.load(expected_fingerprint=fp)

    async def load(self, expected_fingerprint: str | None = None) -> LoadedModel:
        """Load, verify and warm up the model at the location beside the current one,
        then swap it in. A failure keeps the current model serving."""
        async with self._lock:
            model = await self._build(expected_fingerprint)
            old = self.model
            served = old.name if old is not None else (self.name if self.unloaded else None)
            if served is not None and model.name != served:
                self._fingerprint = model.fingerprint
                reason = f"the location now holds another model than '{served}'"
                log.error("model load failed: the location holds model '%s'", model.name)
                raise self._rejected(reason)
            self.unloaded = False
            self._swap(old, model)
            return model

    async def unload(self) -> None:
        """Drop the served model: not ready (the pod leaves its Service) and the watcher
        stops reloading, until the next load. Requests already running finish with it."""
        async with self._lock:
            old = self.model
            self.model = None
            self.unloaded = True
            self.last_load_error = None
            self.ready = False
            self.metrics.ready.labels(self.name).set(0)
            if old is not None:
                self.metrics.model_info.labels(old.name, old.version, old.sha256).set(0)
                gc.unfreeze()
                asyncio.get_running_loop().call_later(RELOAD_GRACE_S, _freeze)
            log.info("model %s unloaded", self.name)

    async def _build(self, expected_fingerprint: str | None) -> LoadedModel:
        s = self.settings
        run_executor = self._run_executor if s.run_in_thread else None
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._load_executor, load_model, s, run_executor, self.metrics
            )
        except Exception as exc:
            if expected_fingerprint is not None:
                self._fingerprint = expected_fingerprint  # don't retry the same content
            log.error("model load from %s failed, keeping the current model: %s", s.model, exc)
            if isinstance(exc, DigestMismatchError):
                self.metrics.digest_mismatches.labels(self.name).inc()
            public = exc.public if isinstance(exc, ArtifactError) else "see the server log"
            raise self._rejected(public) from exc

    def _rejected(self, reason: str) -> ModelLoadError:
        """Count a failed load and keep its reason (safe to answer) for readiness and
        the repository index to report."""
        self.last_load_error = reason
        self.metrics.model_loads.labels(self.name, "failure").inc()
        return ModelLoadError(f"model load failed: {reason}")

    def _swap(self, old: LoadedModel | None, model: LoadedModel) -> None:
        self.model = model  # the atomic swap: in-flight requests keep their reference
        self.name = model.name
        self._fingerprint = model.fingerprint
        self.last_load_error = None
        self._on_swap(model)
        m = self.metrics
        m.model_loads.labels(model.name, "success").inc()
        if old is not None:
            m.model_info.labels(old.name, old.version, old.sha256).set(0)
        m.model_info.labels(model.name, model.version, model.sha256).set(1)
        m.zero_requests(model.name, model.version)
        if old is None:
            _freeze()
        else:
            # The old model (a reference cycle through its batcher) must be collectable
            # once the requests still holding it finish: unfreeze now, freeze again later.
            gc.unfreeze()
            asyncio.get_running_loop().call_later(RELOAD_GRACE_S, _freeze)
        if not self.shutting_down:
            self.ready = True
            m.ready.labels(model.name).set(1)
        log.info("serving model %s version %s (sha256 %s)", model.name, model.version, model.sha256)

    def begin_shutdown(self) -> None:
        """SIGTERM: stop reporting ready (requests are still served while draining)."""
        self.shutting_down = True
        self.ready = False
        self.metrics.ready.labels(self.name).set(0)

    def close(self) -> None:
        """Stop the load and model-run threads (after the last request)."""
        self._load_executor.shutdown(wait=False, cancel_futures=True)
        self._run_executor.shutdown(wait=True)


def _freeze() -> None:
    """Everything alive now (framework, model, caches) is long-lived: move it out of
    the collector's generations so full collections stay short (a gen-2 pass over
    the imported framework otherwise stalls the loop for tens of ms)."""
    gc.collect()
    gc.freeze()

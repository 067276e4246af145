"""The data plane: everything the server does, independent of the HTTP framework.

Routes (FastAPI, or the raw ASGI fast path for inference) only hand bytes and
headers to these methods and turn the returned :class:`Reply` — or a raised
:class:`~kubeloop.serving.errors.ServingError` — into a response.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np
import orjson

from kubeloop.serving import protocol
from kubeloop.serving.canary import CanaryConfig, ConfigWatcher, Splitter, watch
from kubeloop.serving.errors import (
    BadRequestError,
    ModelLoadError,
    NotFoundError,
    ServingError,
    UnavailableError,
)
from kubeloop.serving.feedback import FeedbackStore
from kubeloop.serving.metrics import DriftSnapshot, Metrics, OnlineSnapshot
from kubeloop.serving.model import LoadedModel, fingerprint, load_model
from kubeloop.serving.predlog import Entry, PredictionLog
from kubeloop.serving.settings import ServingSettings

log = logging.getLogger("kubeloop.serving")

JSON = b"application/json"
#: seconds after a model swap before long-lived objects are frozen again
RELOAD_GRACE_S = 5.0
VARIANT = b"x-kubeloop-variant"
Headers = list[tuple[bytes, bytes]]


class Reply(NamedTuple):
    status: int
    body: bytes
    headers: Headers


def error_reply(exc: ServingError) -> Reply:
    """The one mapping of the error family to a response (both transports use it)."""
    return Reply(exc.status_code, exc.body(), [(b"content-type", JSON)])


def _json(doc: Any, status: int = 200) -> Reply:
    return Reply(status, orjson.dumps(doc), [(b"content-type", JSON)])


class DataPlane:
    """Owns the model, inference, metrics, drift, feedback, reload and canary."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.metrics = Metrics(drift=self._drift_snapshot, online=self._online_snapshot)
        self.model: LoadedModel | None = None
        self.model_name = settings.name or "unknown"
        self.ready = False
        self.shutting_down = False
        self.last_load_error: str | None = None
        self._fingerprint: str | None = None
        self._load_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kubeloop-load")
        self._model_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubeloop-run")
        self._tasks: list[asyncio.Task[Any]] = []
        self._children: dict[tuple[str, str, str, int, str], tuple[Any, Any]] = {}
        self._id_prefix = f"{os.getpid():x}-{random.getrandbits(32):08x}-"
        self._id_counter = 0
        self.feedback: FeedbackStore | None = None
        # canary
        self.canary = CanaryConfig(
            url=settings.canary_url, weight=settings.canary_weight, shadow=settings.canary_shadow
        )
        self.splitter = Splitter(0.0 if settings.canary_shadow else settings.canary_weight)
        self._client: httpx.AsyncClient | None = None
        self._shadow_in_flight = 0
        self._shadow_agree = 0
        self._shadow_total = 0
        # prediction log
        self.predlog: PredictionLog | None = None
        if settings.prediction_log:
            name = self.model_name
            self.predlog = PredictionLog(
                settings.prediction_log,
                settings.prediction_log_queue,
                on_written=lambda n: self.metrics.log_lines.labels(name).inc(n),
                on_dropped=lambda n: self.metrics.log_dropped.labels(name).inc(n),
            )
        self._rng = random.Random()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.predlog is not None:
            self.predlog.start()
        self._client = httpx.AsyncClient(
            timeout=self.settings.canary_timeout,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self._apply_canary(self.canary)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._initial_load()))
        if self.settings.routing_file:
            watcher = ConfigWatcher(Path(self.settings.routing_file))
            first = watcher.poll()
            if first is not None:
                self._apply_canary(first)
            self._tasks.append(
                loop.create_task(
                    watch(watcher, self.settings.config_poll_interval, self._apply_canary)
                )
            )

    async def stop(self) -> None:
        self.ready = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._client is not None:
            await self._client.aclose()
        if self.predlog is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.predlog.close)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._model_executor.shutdown(wait=True)

    def begin_shutdown(self) -> None:
        """SIGTERM: stop reporting ready (requests are still served while draining)."""
        self.shutting_down = True
        self.ready = False
        self.metrics.ready.labels(self.model_name).set(0)

    async def _initial_load(self) -> None:
        with contextlib.suppress(ServingError):  # logged in load(); the watcher retries
            await self.load()
        if self.settings.reload_interval > 0:
            await self._watch_model()

    async def _watch_model(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            try:
                fp = await loop.run_in_executor(self._executor, fingerprint, self.settings.model)
            except Exception as exc:
                log.warning("cannot read the model location %s: %s", self.settings.model, exc)
                continue
            if fp != self._fingerprint:
                with contextlib.suppress(ServingError):
                    await self.load(expected_fingerprint=fp)

    async def load(self, expected_fingerprint: str | None = None) -> LoadedModel:
        """Load, verify and warm up the model at the location beside the current one,
        then swap it in. A failure keeps the current model serving."""
        async with self._load_lock:
            loop = asyncio.get_running_loop()
            s = self.settings
            try:
                model = await loop.run_in_executor(
                    self._executor,
                    lambda: load_model(
                        s, self._model_executor if s.run_in_thread else None, self.metrics
                    ),
                )
            except Exception as exc:
                self.last_load_error = str(exc)
                if expected_fingerprint is not None:
                    self._fingerprint = expected_fingerprint  # don't retry the same content
                self.metrics.model_loads.labels(self.model_name, "failure").inc()
                log.error("model load from %s failed, keeping the current model: %s", s.model, exc)
                raise ModelLoadError(f"model load failed: {exc}") from exc
            old = self.model
            if old is not None and model.name != old.name:
                self.metrics.model_loads.labels(self.model_name, "failure").inc()
                msg = (
                    f"model load failed: the location now holds model '{model.name}', "
                    f"this server serves '{old.name}'"
                )
                self.last_load_error = msg
                self._fingerprint = model.fingerprint
                log.error("%s", msg)
                raise ModelLoadError(msg)
            self.model = model  # the atomic swap: in-flight requests keep their reference
            self.model_name = model.name
            self._fingerprint = model.fingerprint
            self.last_load_error = None
            if self.feedback is None or self.feedback.task != model.task:
                self.feedback = FeedbackStore(model.task, s.feedback_capacity, s.feedback_window)
            self.metrics.model_loads.labels(model.name, "success").inc()
            if old is not None:
                self.metrics.model_info.labels(old.name, old.version, old.sha256).set(0)
            self.metrics.model_info.labels(model.name, model.version, model.sha256).set(1)
            if old is None:
                self._freeze()
            else:
                # The old model (a reference cycle through its batcher) must be collectable
                # once the requests still holding it finish: unfreeze now, freeze again later.
                gc.unfreeze()
                loop.call_later(RELOAD_GRACE_S, self._freeze)
            if not self.shutting_down:
                self.ready = True
                self.metrics.ready.labels(model.name).set(1)
            log.info(
                "serving model %s version %s (sha256 %s)", model.name, model.version, model.sha256
            )
            return model

    @staticmethod
    def _freeze() -> None:
        """Everything alive now (framework, model, caches) is long-lived: move it out of
        the collector's generations so full collections stay short (a gen-2 pass over
        the imported framework otherwise stalls the loop for tens of ms)."""
        gc.collect()
        gc.freeze()

    # ---------------------------------------------------------------- metadata

    def server_metadata(self) -> Reply:
        from kubeloop.cli import package_version

        return _json(
            {
                "name": "kubeloop",
                "version": package_version(),
                "extensions": ["binary_tensor_data", "model_repository"],
            }
        )

    def _model(self, name: str, version: str | None = None) -> LoadedModel:
        model = self.model
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

    def model_metadata(self, name: str, version: str | None = None) -> Reply:
        return _json(self._model(name, version).metadata())

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self._model(name, version)
        except ServingError:
            return False
        return self.ready

    def repository_index(self) -> Reply:
        model = self.model
        if model is None:
            return _json([{"name": self.model_name, "state": "UNAVAILABLE", "reason": "loading"}])
        return _json(
            [{"name": model.name, "version": model.version, "state": "READY", "reason": ""}]
        )

    async def load_request(self, name: str) -> Reply:
        model = self.model
        if model is not None and name != model.name:
            raise NotFoundError(f"unknown model '{name}'; this server serves '{model.name}'")
        loaded = await self.load()
        return _json({"name": loaded.name, "version": loaded.version, "sha256": loaded.sha256})

    # -------------------------------------------------------------------- infer

    def _new_id(self) -> str:
        self._id_counter += 1
        return f"{self._id_prefix}{self._id_counter}"

    async def infer_v2(
        self,
        name: str,
        version: str | None,
        body: bytes,
        headers: Mapping[bytes, bytes],
        path: str,
    ) -> Reply:
        t0 = time.perf_counter()
        code = 500
        model = self.model
        mv = model.version if model is not None and model.name == name else ""
        try:
            model = self._model(name, version)
            if version is None and self.splitter.weight > 0 and self.splitter.pick():
                reply = await self._forward(path, body, headers)
                if reply is not None:
                    code = 0  # recorded as the canary's
                    self._count(name, mv, "v2", reply.status, "canary", t0)
                    return reply
            hl = headers.get(b"inference-header-content-length")
            header_length = None
            if hl is not None:
                try:
                    header_length = int(hl)
                except ValueError:
                    raise BadRequestError(
                        "Inference-Header-Content-Length must be an integer"
                    ) from None
            decoded = protocol.decode_v2(
                body,
                model.inputs,
                model.index,
                header_length=header_length,
                max_rows=self.settings.max_rows,
                output_names=model.output_names,
            )
            outputs = await model.infer(model.feed(decoded), decoded.rows)
            request_id = decoded.request_id or _header_id(headers) or self._new_id()
            pairs = [(spec, outputs[spec.name]) for spec in model.outputs]
            payload, json_length = protocol.encode_v2(
                model.name, model.version, request_id, pairs, decoded
            )
            self._after(model, request_id, decoded, outputs, t0, body, path)
            code = 200
            hdrs: Headers = [
                (b"content-type", JSON if json_length is None else b"application/octet-stream")
            ]
            if json_length is not None:
                hdrs.append((b"inference-header-content-length", str(json_length).encode()))
            return Reply(200, payload, hdrs)
        except ServingError as exc:
            code = exc.status_code
            raise
        finally:
            if code:
                self._count(name, mv, "v2", code, "stable", t0)

    async def predict_v1(
        self, name: str, body: bytes, headers: Mapping[bytes, bytes], path: str
    ) -> Reply:
        t0 = time.perf_counter()
        code = 500
        model = self.model
        mv = model.version if model is not None and model.name == name else ""
        try:
            model = self._model(name)
            if self.splitter.weight > 0 and self.splitter.pick():
                reply = await self._forward(path, body, headers)
                if reply is not None:
                    code = 0
                    self._count(name, mv, "v1", reply.status, "canary", t0)
                    return reply
            decoded = protocol.decode_v1(
                body, model.inputs, model.index, max_rows=self.settings.max_rows
            )
            outputs = await model.infer(model.feed(decoded), decoded.rows)
            request_id = _header_id(headers) or self._new_id()
            payload = protocol.encode_v1(
                outputs[model.label_output],
                outputs[model.proba_output] if model.proba_output else None,
            )
            self._after(model, request_id, decoded, outputs, t0, body, path)
            code = 200
            return Reply(
                200, payload, [(b"content-type", JSON), (b"x-request-id", request_id.encode())]
            )
        except ServingError as exc:
            code = exc.status_code
            raise
        finally:
            if code:
                self._count(name, mv, "v1", code, "stable", t0)

    def _count(
        self, name: str, version: str, protocol_: str, code: int, variant: str, t0: float
    ) -> None:
        elapsed = time.perf_counter() - t0
        key = (name, version, protocol_, code, variant)
        children = self._children.get(key)
        if children is None:
            model = self.model
            label = name if model is not None and name == model.name else "unknown"
            m = self.metrics
            children = (
                m.requests.labels(label, version, protocol_, str(code), variant),
                m.latency.labels(label, version, protocol_, variant),
            )
            if len(self._children) < 10_000 and label != "unknown":  # bounded
                self._children[key] = children
        children[0].inc()
        children[1].observe(elapsed)

    def _after(
        self,
        model: LoadedModel,
        request_id: str,
        decoded: protocol.Decoded,
        outputs: Mapping[str, np.ndarray[Any, Any]],
        t0: float,
        body: bytes,
        path: str,
    ) -> None:
        """Per-request bookkeeping after a prediction: feedback, log, shadow."""
        labels = outputs[model.label_output]
        feedback = self.feedback
        if feedback is not None:
            feedback.remember(request_id, labels.reshape(-1).tolist())
        if self.predlog is not None:
            inputs = None
            share = self.settings.prediction_log_inputs
            if share > 0 and (share >= 1 or self._rng.random() < share):
                inputs = {s.name: c for s, c in zip(model.inputs, decoded.columns, strict=True)}
            self.predlog.submit(
                Entry(
                    request_id,
                    model.name,
                    model.version,
                    time.time(),
                    time.perf_counter() - t0,
                    dict(outputs),
                    inputs,
                    "stable",
                )
            )
        canary = self.canary
        if canary.shadow and canary.active and canary.weight > 0:
            self._shadow(model, path, body, labels)

    # ------------------------------------------------------------------- canary

    def _apply_canary(self, config: CanaryConfig) -> None:
        self.canary = config
        weight = config.weight if config.active else 0.0
        self.splitter.set_weight(0.0 if config.shadow else weight)
        self._shadow_split = Splitter(weight if config.shadow else 0.0)
        self.metrics.canary_weight.labels(self.model_name, "forward").set(
            0.0 if config.shadow else weight
        )
        self.metrics.canary_weight.labels(self.model_name, "shadow").set(
            weight if config.shadow else 0.0
        )
        log.info(
            "canary: %s weight %s%s",
            config.url or "none",
            config.weight,
            " (shadow)" if config.shadow else "",
        )

    async def _forward(
        self, path: str, body: bytes, headers: Mapping[bytes, bytes]
    ) -> Reply | None:
        """Send the request to the canary; None when it is unreachable (stable answers)."""
        url = self.canary.url
        client = self._client
        if url is None or client is None:
            return None
        fwd = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in headers.items()
            if k in (b"content-type", b"inference-header-content-length", b"x-request-id")
        }
        try:
            resp = await client.post(url.rstrip("/") + path, content=body, headers=fwd)
        except httpx.HTTPError as exc:
            self.metrics.canary.labels(self.model_name, "forward", "unreachable").inc()
            log.warning("canary %s unreachable, stable answers: %s", url, exc)
            return None
        outcome = "ok" if resp.status_code < 500 else "error"
        self.metrics.canary.labels(self.model_name, "forward", outcome).inc()
        out: Headers = [(VARIANT, b"canary")]
        for key in ("content-type", "inference-header-content-length", "x-request-id"):
            value = resp.headers.get(key)
            if value is not None:
                out.append((key.encode(), value.encode("latin-1")))
        return Reply(resp.status_code, resp.content, out)

    def _shadow(
        self, model: LoadedModel, path: str, body: bytes, labels: np.ndarray[Any, Any]
    ) -> None:
        if not self._shadow_split.pick():
            return
        if self._shadow_in_flight >= self.settings.shadow_max_in_flight:
            self.metrics.canary.labels(self.model_name, "shadow", "skipped").inc()
            return
        self._shadow_in_flight += 1
        task = asyncio.get_running_loop().create_task(self._mirror(model, path, body, labels))
        task.add_done_callback(
            lambda _: setattr(self, "_shadow_in_flight", self._shadow_in_flight - 1)
        )

    async def _mirror(
        self, model: LoadedModel, path: str, body: bytes, labels: np.ndarray[Any, Any]
    ) -> None:
        url = self.canary.url
        client = self._client
        if url is None or client is None:
            return
        # the mirror asks for plain JSON so the prediction can be compared
        try:
            resp = await client.post(
                url.rstrip("/") + path,
                content=body,
                headers={"content-type": "application/json"},
            )
        except httpx.HTTPError:
            self.metrics.canary.labels(self.model_name, "shadow", "unreachable").inc()
            return
        if resp.status_code >= 400:
            self.metrics.canary.labels(self.model_name, "shadow", "error").inc()
            return
        self.metrics.canary.labels(self.model_name, "shadow", "ok").inc()
        try:
            theirs = _prediction_of(orjson.loads(resp.content), model.label_output)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self.metrics.shadow_compared.labels(self.model_name, "unreadable").inc()
            return
        mine = labels.reshape(-1).tolist()
        if model.task == "classification":
            agree = [str(a) for a in mine] == [str(b) for b in theirs]
        else:
            agree = len(mine) == len(theirs) and bool(
                np.allclose(
                    np.asarray(mine, float), np.asarray(theirs, float), rtol=1e-5, atol=1e-6
                )
            )
        self._shadow_total += 1
        self._shadow_agree += int(agree)
        self.metrics.shadow_compared.labels(self.model_name, "agree" if agree else "disagree").inc()
        self.metrics.shadow_agreement.labels(self.model_name).set(
            self._shadow_agree / self._shadow_total
        )

    # ----------------------------------------------------------------- feedback

    def feedback_request(self, name: str, body: bytes) -> Reply:
        model = self._model(name)
        store = self.feedback
        assert store is not None
        doc = protocol.loads(body)
        items: list[tuple[str, Any]] = []
        entries = (
            doc
            if isinstance(doc, list)
            else doc.get("feedback", [doc])
            if isinstance(doc, dict)
            else None
        )
        if not isinstance(entries, list) or not entries:
            raise BadRequestError(
                "feedback must be {'id', 'truth'}, a list of those, or {'feedback': [...]}"
            )
        for pos, item in enumerate(entries):
            if not isinstance(item, dict):
                raise BadRequestError(f"feedback[{pos}] must be an object with 'id' and 'truth'")
            rid = item.get("id")
            if not isinstance(rid, str) or not rid:
                raise BadRequestError(f"feedback[{pos}]: 'id' must be a non-empty string")
            if "truth" not in item:
                raise BadRequestError(f"feedback[{pos}] ({rid}): 'truth' is missing")
            items.append((rid, item["truth"]))
        try:
            matched, unknown = store.record(items)
        except ValueError as exc:
            raise BadRequestError(str(exc)) from None
        if matched:
            self.metrics.feedback.labels(model.name, model.version, "matched").inc(matched)
        if unknown:
            self.metrics.feedback.labels(model.name, model.version, "unknown").inc(len(unknown))
        value = store.value()
        return _json(
            {
                "matched": matched,
                "unknown": len(unknown),
                "unknown_ids": unknown[:100],
                "metric": store.metric,
                "value": value,
                "rows": store.rows,
            }
        )

    # ----------------------------------------------------------- scrape gauges

    def _drift_snapshot(self) -> DriftSnapshot | None:
        model = self.model
        if model is None or model.drift is None:
            return None
        pred = model.prediction_drift
        pred_scores = pred.scores() if pred is not None else None
        return DriftSnapshot(
            model=model.name,
            version=model.version,
            threshold=self.settings.drift_threshold,
            features=model.drift.scores(),
            rows=model.drift.rows,
            prediction=next(iter(pred_scores.values()), 0.0) if pred_scores else None,
            prediction_rows=pred.rows if pred is not None else 0,
        )

    def _online_snapshot(self) -> OnlineSnapshot | None:
        model, store = self.model, self.feedback
        if model is None or store is None:
            return None
        return OnlineSnapshot(model.name, model.version, store.metric, store.value(), store.rows)


def _header_id(headers: Mapping[bytes, bytes]) -> str | None:
    value = headers.get(b"x-request-id")
    if value is None or not value or len(value) > 256:
        return None
    return value.decode("latin-1")


def _prediction_of(doc: Any, output: str) -> list[Any]:
    if "predictions" in doc:
        return list(doc["predictions"])
    for out in doc["outputs"]:
        if out["name"] == output:
            data = out["data"]
            return list(data)
    raise KeyError(output)

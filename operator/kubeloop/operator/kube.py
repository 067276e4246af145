"""The few API-server operations the handlers need, over the dynamic client.

Writes are idempotent: :meth:`Kube.apply` is server-side apply with one field
manager (re-applying the same object is a no-op), :meth:`Kube.create` treats
"already exists" as success and returns what is there. A no-op apply and a DELETE
answered 404 still cost the API server a write, so :meth:`Kube.apply` and
:meth:`Kube.delete` skip children the :class:`AppliedCache` knows to be as wanted.
Every request is counted in ``kubeloop_operator_api_requests_total`` (by verb and kind),
sent with the ``kubeloop-operator`` user agent, and bounded by :data:`REQUEST_TIMEOUT`.
"""

from __future__ import annotations

import threading
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError
from kubernetes.dynamic.resource import Resource

from kubeloop.api.base import API_VERSION
from kubeloop.operator import metrics
from kubeloop.operator.children import AppliedCache

FIELD_MANAGER = "kubeloop-operator"
USER_AGENT = "kubeloop-operator"


class ConflictError(Exception):
    """An object of that name exists already, or changed since it was read (HTTP 409)."""


#: Answers of an API server that is restarting (429 "storage is (re)initializing"), failing
#: or overloaded; 0 is the client's own "no HTTP answer" (a TLS handshake cut short).
UNAVAILABLE_STATUSES = frozenset({0, 429, 500, 502, 503, 504})


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the API server could not be reached or is not serving yet
    (so trying again in a moment will do), rather than anything about the request."""
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError):
        return True  # refused, reset, timed out: after urllib3's own retries
    return isinstance(exc, ApiException) and exc.status in UNAVAILABLE_STATUSES


#: Seconds to connect, and to wait for an answer, per request: a half-open connection to a
#: stalled API server fails the handler (retried soon, see :func:`unavailable`) instead of
#: holding one of kopf's worker threads for good.
REQUEST_TIMEOUT = (5.0, 30.0)

#: Connections kept to the API server: one per worker thread (kopf's pool), so none is
#: closed and opened again with a new TLS handshake.
POOL_SIZE = 32


def load_config() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = POOL_SIZE
    return client.ApiClient(configuration)


def user_config(
    kubeconfig: str | None = None, context: str | None = None
) -> tuple[client.ApiClient, str | None]:
    """For a person's command: the kubeconfig (``KUBECONFIG`` or ``~/.kube/config``) with
    its context's namespace, else the pod's service account (namespace None).

    Raises ``config.ConfigException`` when there is neither.
    """
    try:
        config.load_kube_config(config_file=kubeconfig, context=context)
    except (config.ConfigException, FileNotFoundError):
        config.load_incluster_config()
        return client.ApiClient(), None
    contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = next((c for c in contexts if c.get("name") == context), active) if context else active
    return client.ApiClient(), (chosen or {}).get("context", {}).get("namespace")


class Kube:
    """A thread-safe facade: kopf runs sync handlers in a thread pool."""

    def __init__(
        self,
        api_client: client.ApiClient | None = None,
        request_timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> None:
        api_client = api_client or load_config()
        self._timeout = request_timeout
        api_client.user_agent = USER_AGENT
        self._dyn = DynamicClient(api_client)
        self._resources: dict[tuple[str, str], Resource] = {}
        self._lock = threading.Lock()
        self.cache = AppliedCache()

    @staticmethod
    def _count(verb: str, kind: str) -> None:
        metrics.API_REQUESTS.labels(verb=verb, kind=kind).inc()

    def _resource(self, api_version: str, kind: str) -> Resource:
        key = (api_version, kind)
        with self._lock:
            if key not in self._resources:
                self._resources[key] = self._dyn.resources.get(api_version=api_version, kind=kind)
            return self._resources[key]

    def serves(self, api_version: str, kind: str) -> bool:
        """Whether the API server knows the kind (its CRD is installed)."""
        try:
            self._resource(api_version, kind)
        except ResourceNotFoundError:
            return False
        return True

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as a dict, or None when it does not exist."""
        self._count("get", kind)
        try:
            obj = self._resource(api_version, kind).get(
                name=name, namespace=namespace, _request_timeout=self._timeout
            )
        except NotFoundError:
            return None
        result: dict[str, Any] = obj.to_dict()
        return result

    def read(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """As :meth:`get`, but a child the operator applied (or deleted) and has watched
        since is answered from the cache, without a request."""
        known, live = self.cache.live((api_version, kind, namespace, name))
        return live if known else self.get(api_version, kind, namespace, name)

    def list(
        self, api_version: str, kind: str, namespace: str, selector: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Objects of a kind in a namespace, optionally by label selector."""
        label_selector = ",".join(f"{k}={v}" for k, v in (selector or {}).items()) or None
        self._count("list", kind)
        items = self._resource(api_version, kind).get(
            namespace=namespace, label_selector=label_selector, _request_timeout=self._timeout
        )
        return [item.to_dict() for item in items.items]

    def create(self, obj: dict[str, Any], *, exist_ok: bool = True) -> dict[str, Any]:
        """Create ``obj``; when it exists, return the existing one (or raise ConflictError)."""
        meta = obj["metadata"]
        resource = self._resource(obj["apiVersion"], obj["kind"])
        self._count("create", obj["kind"])
        try:
            created: dict[str, Any] = resource.create(
                body=obj, namespace=meta["namespace"], _request_timeout=self._timeout
            ).to_dict()
            self.cache.applied(obj, created)  # a child Job: its watch keeps it for read()
            return created
        except ApiException as exc:
            if exc.status != 409:
                raise
            if not exist_ok:
                raise ConflictError(meta["name"]) from exc
        existing = self.get(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        if existing is None:  # deleted in between: let the caller retry
            raise ConflictError(meta["name"])
        return existing

    def create_if_absent(self, obj: dict[str, Any]) -> bool:
        """Create ``obj`` unless one of its name exists, which is left as it is and not
        read (so a Secret needs only the ``create`` verb). True when it was created."""
        meta = obj["metadata"]
        self._count("create", obj["kind"])
        try:
            self._resource(obj["apiVersion"], obj["kind"]).create(
                body=obj, namespace=meta["namespace"], _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
            return False
        return True

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply ``obj`` as the operator's field manager; nothing is sent when
        the cache knows the live object is what ``obj`` would make it (then it is returned)."""
        live = self.cache.unchanged(obj)
        if live is not None:
            return live
        meta = obj["metadata"]
        resource = self._resource(obj["apiVersion"], obj["kind"])
        self._count("apply", obj["kind"])
        applied: dict[str, Any] = resource.server_side_apply(
            body=obj,
            name=meta["name"],
            namespace=meta["namespace"],
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
            _request_timeout=self._timeout,
        ).to_dict()
        self.cache.applied(obj, applied)
        return applied

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete, the dependents in the background; False when it was already gone (or
        its kind is not served, or the cache knows it is gone: then nothing is sent)."""
        if not self.serves(api_version, kind):
            return False
        key = (api_version, kind, namespace, name)
        if self.cache.absent(key):
            return False
        self._count("delete", kind)
        try:
            self._resource(api_version, kind).delete(
                name=name,
                namespace=namespace,
                body={"propagationPolicy": "Background"},
                _request_timeout=self._timeout,
            )
        except NotFoundError:
            self.cache.deleted(key)
            return False
        self.cache.deleted(key)
        return True

    def patch_status(
        self,
        kind: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch the status subresource of a Kubeloop object; the patched object.

        With ``resource_version``, only if the object is still at that version: a decision
        made from the object as read is recorded only when no one wrote it since (else
        :class:`ConflictError`, and the caller reads and decides again).
        """
        resource = self._resource(API_VERSION, kind).subresources["status"]
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        self._count("patch", kind)
        try:
            patched: dict[str, Any] = resource.patch(
                body=body,
                name=name,
                namespace=namespace,
                content_type="application/merge-patch+json",
                _request_timeout=self._timeout,
            ).to_dict()
        except ApiException as exc:
            if exc.status != 409 or resource_version is None:
                raise
            raise ConflictError(name) from exc
        return patched

    def patch_metadata(
        self, api_version: str, kind: str, namespace: str, name: str, metadata: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Merge-patch metadata (labels, annotations; None removes a key); the patched
        object, or None when it is gone."""
        self._count("patch", kind)
        try:
            patched: dict[str, Any] = (
                self._resource(api_version, kind)
                .patch(
                    body={"metadata": metadata},
                    name=name,
                    namespace=namespace,
                    content_type="application/merge-patch+json",
                    _request_timeout=self._timeout,
                )
                .to_dict()
            )
        except NotFoundError:
            return None
        return patched

"""Prometheus and Alertmanager configuration for the local loop (``make demo``, the tests).

Debian's Prometheus is built without Kubernetes discovery, so targets are handed to it
as the target groups pod discovery would produce (:func:`discovered_pod`), and the
documented scrape job's relabelling (:func:`kubeloop.operator.alerts.rules.scrape_job`)
applies to them unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubeloop.operator.alerts.rules import scrape_job


def discovered_pod(address: str, pod: Mapping[str, Any], port: str = "http") -> dict[str, Any]:
    """What Kubernetes pod discovery gives Prometheus for the ``port`` port of ``pod``
    (``https`` for a pod of a deployment with ``spec.tls``)."""
    meta = pod["metadata"]
    labels = {
        f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v
        for k, v in (meta.get("labels") or {}).items()
    }
    labels |= {
        "__meta_kubernetes_namespace": meta["namespace"],
        "__meta_kubernetes_pod_name": meta["name"],
        "__meta_kubernetes_pod_container_port_name": port,
    }
    return {"targets": [address], "labels": labels}


def serving_job(job: dict[str, Any] | None = None, **discovery: Any) -> dict[str, Any]:
    """The documented scrape job (or ``job``, e.g. a ``tls_scrape_job``) with ``discovery``
    (``static_configs=`` or ``file_sd_configs=``) in place of Kubernetes discovery."""
    job = dict(job or scrape_job())
    del job["kubernetes_sd_configs"]
    job.update(discovery)
    return job


def alertmanager_config(
    webhook_url: str, token_file: Path, *, group_interval: str, repeat_interval: str
) -> dict[str, Any]:
    """Alertmanager routing Kubeloop's retrain alerts to the operator's receiver."""
    return {
        "route": {
            "receiver": "kubeloop",
            "group_by": ["alertname", "namespace", "model_deployment"],
            "group_wait": "1s",
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
            "routes": [{"receiver": "kubeloop", "matchers": ['kubeloop_retrain="true"']}],
        },
        "receivers": [
            {
                "name": "kubeloop",
                "webhook_configs": [
                    {
                        "url": webhook_url,
                        "send_resolved": True,
                        "http_config": {
                            "authorization": {"type": "Bearer", "credentials_file": str(token_file)}
                        },
                    }
                ],
            }
        ],
    }


def prometheus_config(
    rules_file: Path, alertmanager_port: int, jobs: list[dict[str, Any]], interval: str
) -> dict[str, Any]:
    """Prometheus scraping ``jobs`` and evaluating ``rules_file`` every ``interval``."""
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": [str(rules_file)],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
        },
        "scrape_configs": jobs,
    }

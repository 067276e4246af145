"""What docs/security.md and docs/operator.md show for HTTPS and NetworkPolicies is what the
code builds, and the scrape job passes promtool."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from kubeloop.api.v1alpha1 import ModelDeploymentSpec
from kubeloop.devcluster.monitoring import discovered_pod, serving_job
from kubeloop.operator import builders
from kubeloop.operator.alerts import rules
from kubeloop.operator.settings import OperatorSettings
from needs import prometheus_tool

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOCUMENTED_CA = "/etc/prometheus/kubeloop/ml-iris-ca.crt"


def blocks(doc: str) -> list[Any]:
    found = re.findall(r"```yaml\n(.*?)```", (DOCS / doc).read_text(), flags=re.DOTALL)
    return [yaml.safe_load(b) for b in found]


def one(doc: str, test: Any) -> dict[str, Any]:
    found = [b for b in blocks(doc) if isinstance(b, dict) and test(b)]
    assert len(found) == 1, f"one such yaml block in {doc}"
    return found[0]


def test_the_documented_tls_scrape_job_is_the_one_in_code():
    job = one("security.md", lambda b: "scrape_configs" in b)["scrape_configs"]
    assert job == [rules.tls_scrape_job("ml", "iris", DOCUMENTED_CA)]


def test_the_tls_scrape_job_passes_promtool(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("")  # promtool checks the file is there
    # Debian's Prometheus is built without Kubernetes discovery: the target group it
    # would give instead
    pod_labels = {"kubeloop.io/model-deployment": "iris", "kubeloop.io/role": "stable"}
    pod = {"metadata": {"namespace": "ml", "name": "iris-stable-0", "labels": pod_labels}}
    job = serving_job(
        rules.tls_scrape_job("ml", "iris", str(ca)),
        static_configs=[discovered_pod("127.0.0.1:8080", pod, port="https")],
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": [job]}))
    result = subprocess.run(
        [prometheus_tool("promtool"), "check", "config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_documented_tls_podmonitor_matches_the_scrape_job_and_the_plain_one():
    monitor = one("security.md", lambda b: b.get("kind") == "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    job = rules.tls_scrape_job("ml", "iris", DOCUMENTED_CA)
    assert monitor["metadata"]["namespace"] == "ml"
    assert monitor["spec"]["selector"] == {"matchLabels": {"kubeloop.io/model-deployment": "iris"}}
    assert (endpoint["port"], endpoint["scheme"]) == ("https", job["scheme"])
    assert endpoint["tlsConfig"]["serverName"] == job["tls_config"]["server_name"]
    assert endpoint["tlsConfig"]["ca"] == {"secret": {"name": "iris-tls", "key": "ca.crt"}}
    plain = one("monitoring.md", lambda b: b.get("kind") == "PodMonitor")
    assert endpoint["relabelings"] == plain["spec"]["podMetricsEndpoints"][0]["relabelings"]


def test_the_documented_certificate_names_both_services_of_the_example():
    cert = one("operator.md", lambda b: b.get("kind") == "Certificate")
    md = yaml.safe_load((DOCS.parent / "examples" / "modeldeployment-https.yaml").read_text())
    md["metadata"].update(namespace=cert["metadata"]["namespace"], uid="0")
    assert cert["spec"]["secretName"] == md["spec"]["tls"]["secretName"]
    settings = OperatorSettings()
    for role in ("stable", "canary"):
        host = builders.service_url(md, settings, role).split("//")[1].split(":")[0]
        assert host in cert["spec"]["dnsNames"], host


def test_the_documented_network_policies_parse():
    snippets = [b for b in blocks("security.md") + blocks("operator.md") if "networkPolicy" in b]
    snippets += [b["spec"] for b in blocks("operator.md") if "networkPolicy" in b.get("spec", {})]
    assert len(snippets) == 2
    for snippet in snippets:
        spec = ModelDeploymentSpec.model_validate({"modelName": "iris", **snippet})
        assert spec.network_policy is not None
        assert spec.network_policy.ingress_from

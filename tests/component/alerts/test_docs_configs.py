"""The Prometheus and Alertmanager configuration in docs/monitoring.md passes the real tools."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from kubeloop.devcluster.monitoring import discovered_pod, serving_job
from kubeloop.operator.alerts import rules
from needs import prometheus_tool

DOC = Path(__file__).resolve().parents[3] / "docs" / "monitoring.md"


def yaml_blocks() -> list[dict]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    return [yaml.safe_load(b) for b in blocks]


def block_with(key: str) -> dict:
    found = [b for b in yaml_blocks() if isinstance(b, dict) and key in b]
    assert len(found) == 1, f"one yaml block with {key!r} in {DOC.name}"
    return found[0]


def check(argv: list[str], cwd: Path) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_documented_scrape_job_is_the_one_in_code():
    assert block_with("scrape_configs")["scrape_configs"] == [rules.scrape_job()]


def test_the_documented_scrape_job_passes_promtool(tmp_path):
    # Debian's Prometheus is built without Kubernetes discovery: give the job the
    # labels discovery would give a serving pod built by the operator instead.
    pod_labels = {"kubeloop.io/model-deployment": "iris", "kubeloop.io/role": "stable"}
    pod = {"metadata": {"namespace": "ml", "name": "iris-stable-0", "labels": pod_labels}}
    job = serving_job(static_configs=[discovered_pod("127.0.0.1:8080", pod)])
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump({"scrape_configs": [job]}))
    check([prometheus_tool("promtool"), "check", "config", str(path)], tmp_path)


def test_the_documented_alertmanager_route_passes_amtool(tmp_path):
    config = block_with("receivers")
    config["route"].setdefault("receiver", "kubeloop")  # the doc shows a sub-tree only
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    amtool = str(Path(prometheus_tool("alertmanager")).with_name("amtool"))
    check([amtool, "check-config", str(path)], tmp_path)


def test_the_documented_podmonitor_adds_the_deployment_label():
    (monitor,) = [b for b in yaml_blocks() if isinstance(b, dict) and b.get("kind") == "PodMonitor"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    targets = {r["targetLabel"] for r in endpoint["relabelings"]}
    assert "model_deployment" in targets

"""How fast the guard acts: a bad canary's rollback and a good canary's promotion.

A real control plane (kwok nodes), the operator process, real ``kubeloop serve`` processes
playing the stable and canary pods, a real Prometheus scraping them every second, and
traffic to both: the cluster tier's canary lab (tests/cluster/canary_lab.py), timed.

- rollback: from the canary's first step (its weight on the pods) until all traffic is
  back on stable, against ``failureLimit x interval`` — the least any analysis that
  counts ``failureLimit`` failed checks ``interval`` apart can take;
- promotion: from the canary's creation until it is the stable version, against the sum
  of the steps' pauses — the least a time-only rollout takes.

Not a test: run with ``make bench-rollout``.

    python bench/rollout/bench_rollout.py [--runs 3]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests" / "cluster"), str(ROOT / "tests")]

from canary_lab import Rollout, canary_of, guarded, lab, train  # noqa: E402
from kubetest import Kubectl  # noqa: E402
from test_drift_loop import FEATURES  # noqa: E402

from conftest import NODES, install_crds  # noqa: E402
from kubeloop.devcluster import DevCluster  # noqa: E402
from kubeloop.devcluster.binaries import Binaries  # noqa: E402

INTERVAL, FAILURE_LIMIT = 2.0, 3
PAUSES = (5.0, 5.0)


@dataclass
class Scenario:
    name: str
    model: Path
    spec: dict[str, Any]
    ideal: float
    #: from what the clock runs, and what stops it (both read from status)
    start: Callable[[dict[str, Any]], bool]
    done: Callable[[dict[str, Any]], bool]


def spec(steps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = guarded(interval=f"{INTERVAL:g}s", steps=steps)["spec"]
    out["canary"]["analysis"]["failureLimit"] = FAILURE_LIMIT
    return out


def scenarios(good: Path, bad: Path) -> list[Scenario]:
    steps = [{"weight": w, "pause": f"{p:g}s"} for w, p in zip((10, 50), PAUSES, strict=True)]
    return [
        Scenario(
            "rollback of a bad canary",
            bad,
            spec(steps),
            FAILURE_LIMIT * INTERVAL,
            lambda s: s.get("canaryVersion") == 2 and s.get("stepStartedTime") is not None,
            lambda s: bool(s.get("rolledBack")),
        ),
        Scenario(
            "promotion of a good canary",
            good,
            spec(steps),
            sum(PAUSES),
            lambda s: s.get("canaryVersion") == 2,
            lambda s: s.get("stableVersion") == 2,
        ),
    ]


def timed(run: Rollout, scenario: Scenario, rows: pd.DataFrame, deadline: float = 300) -> float:
    """Seconds from ``start`` to ``done``, polling status every 0.1 s."""
    started: float | None = None
    end = time.monotonic() + deadline
    with canary_of(run, scenario.model, rows):
        while time.monotonic() < end:
            status = run.status()
            now = time.monotonic()
            if started is None and scenario.start(status):
                started = now
            if started is not None and scenario.done(status):
                return now - started
            time.sleep(0.1)
    raise RuntimeError(f"{scenario.name}: not done in {deadline:g}s: {run.status()}")


@contextmanager
def control_plane() -> Iterator[tuple[str, Any]]:
    dev = DevCluster(f"bench-rollout-{secrets.token_hex(2)}", bind_to_parent=True)
    try:
        path = str(dev.up(nodes=NODES, timeout=180))
        install_crds(Kubectl(str(Binaries.resolve(("kubectl",))["kubectl"]), path))
        api = config.new_client_from_config(config_file=path)
        yield path, api
        api.close()
    finally:
        dev.down()


def measure(runs: int, work: Path) -> list[tuple[Scenario, list[float]]]:
    data = work / "cancer.csv"
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame[[*FEATURES, "target"]].to_csv(data, index=False)
    good = train(data, work / "good")
    bad = train(data, work / "bad", flip=True)
    rows = frame[FEATURES].iloc[:50]
    results = []
    with control_plane() as (kubeconfig, api):
        core = client.CoreV1Api(api)
        for scenario in scenarios(good, bad):
            times = []
            for n in range(runs):
                ns = f"bench-{n}-{secrets.token_hex(3)}"
                core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
                folder = work / ns
                folder.mkdir()
                with lab(kubeconfig, api, ns, folder, good, spec=scenario.spec) as run:
                    times.append(timed(run, scenario, rows))
                print(f"  {scenario.name}, run {n + 1}: {times[-1]:.1f}s", file=sys.stderr)
            results.append((scenario, times))
    return results


def table(results: list[tuple[Scenario, list[float]]]) -> str:
    head = f"{'':28} {'bound (s)':>10} {'median (s)':>11} {'min-max (s)':>13} {'ratio':>7}"
    lines = [head, "-" * len(head)]
    for scenario, times in results:
        median = statistics.median(times)
        spread = f"{min(times):.1f}-{max(times):.1f}"
        lines.append(
            f"{scenario.name:28} {scenario.ideal:10.1f} {median:11.1f} {spread:>13} "
            f"{median / scenario.ideal:6.2f}x"
        )
    lines.append(
        f"bound: rollback = failureLimit {FAILURE_LIMIT} x interval {INTERVAL:g}s; "
        f"promotion = pauses {' + '.join(f'{p:g}s' for p in PAUSES)}. "
        "ratio = median / bound (1.00x is the least possible)."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        results = measure(args.runs, Path(tmp))
    print(table(results))


if __name__ == "__main__":
    main()

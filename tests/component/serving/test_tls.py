"""HTTPS: a real ``kubeloop serve`` with a certificate from a test CA, clients that trust
that CA (and ones that do not), canary forwarding and shadowing between two HTTPS
servers, and a real Prometheus scraping an HTTPS server with the documented TLS job."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from serving_helpers import KUBELOOP, Server, prometheus_scraping, serving, wait_for

from kubeloop.devcluster.monitoring import discovered_pod, serving_job
from kubeloop.devcluster.pki import Authority, Pki, name, write_pair
from kubeloop.operator.alerts.rules import tls_scrape_job

#: the names the certificate is valid for: the Service names the operator gives a
#: deployment "cancer" in namespace "ml", and loopback (the tests dial it directly)
SERVICE_NAMES = ("cancer.ml.svc", "cancer-canary.ml.svc")


@dataclass(frozen=True)
class Secret:
    """The files of a kubernetes.io/tls Secret as a pod mounts them."""

    dir: Path

    @property
    def crt(self) -> Path:
        return self.dir / "tls.crt"

    @property
    def key(self) -> Path:
        return self.dir / "tls.key"

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def env(self, **extra: str) -> dict[str, str]:
        """The settings the operator gives a serving pod that mounts this Secret."""
        return {
            "KUBELOOP_SERVING_TLS_CERT_FILE": str(self.crt),
            "KUBELOOP_SERVING_TLS_KEY_FILE": str(self.key),
            "KUBELOOP_SERVING_TLS_CA_FILE": str(self.ca),
            **extra,
        }

    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def make_secret(directory: Path, ca: Authority, *names: str, with_ca: bool = True) -> Secret:
    """A Secret as cert-manager writes it: a key pair for ``names`` issued by ``ca``."""
    key, cert = ca.issue(name("cancer"), server_names=names)
    write_pair(Pki(directory), "tls", key, cert)
    if with_ca:
        (directory / "ca.crt").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    return Secret(directory)


@pytest.fixture(scope="module")
def secret(tmp_path_factory: pytest.TempPathFactory) -> Secret:
    ca = Authority.create("kubeloop-test-ca")
    return make_secret(tmp_path_factory.mktemp("tls"), ca, *SERVICE_NAMES, "127.0.0.1")


@pytest.fixture(scope="module")
def https(cancer_model: Path, secret: Secret) -> Iterator[Server]:
    with serving(cancer_model, "--name", "cancer", env=secret.env(), verify=secret.trust()) as s:
        yield s


def body(rows) -> dict:
    data = rows.to_numpy(np.float32).ravel().tolist()
    return {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": data}]}


def test_inference_over_https_verified_by_the_ca(https, secret, cancer_rows):
    assert https.url.startswith("https://")
    with httpx.Client(base_url=https.url, verify=secret.trust(), timeout=30) as http:
        r = http.post("/v2/models/cancer/infer", json=body(cancer_rows.iloc[:3]))
        assert r.status_code == 200, r.text
        assert len(r.json()["outputs"][0]["data"]) == 3
        assert http.get("/v2/health/ready").status_code == 200


def test_plain_http_gets_no_answer(https):
    plain = https.url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/v2/health/ready", timeout=10)
    assert https.ready()  # the bad client cost the server nothing


def test_a_client_that_does_not_trust_the_ca_is_refused(https, tmp_path):
    # the system's trust store (httpx's default) does not hold the test CA
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{https.url}/v2/health/ready", timeout=10)
    stranger = make_secret(tmp_path, Authority.create("another-ca"), "127.0.0.1")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{https.url}/v2/health/ready", timeout=10, verify=stranger.trust())


def test_a_certificate_for_other_names_fails_the_host_name_check(https, secret):
    # the certificate names 127.0.0.1, not localhost
    url = https.url.replace("127.0.0.1", "localhost")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{url}/v2/health/ready", timeout=10, verify=secret.trust())


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KUBELOOP_SERVING_TLS_CERT_FILE": "/no/such/tls.crt"}, "tls_cert_file and tls_key_file"),
        (
            {
                "KUBELOOP_SERVING_TLS_CERT_FILE": "/no/such/tls.crt",
                "KUBELOOP_SERVING_TLS_KEY_FILE": "/no/such/tls.key",
            },
            "tls_cert_file: cannot read /no/such/tls.crt",
        ),
    ],
    ids=["cert-without-key", "missing-files"],
)
def test_a_bad_tls_setting_stops_the_server_naming_it(cancer_model, env, named):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KUBELOOP_SERVING_")}
    result = subprocess.run(
        [str(KUBELOOP), "serve", "--model", str(cancer_model), "--port", "0"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert named in result.stderr


def forwarded(stable: Server, rows, n: int) -> list[str]:
    with stable.client() as http:
        variants = []
        for _ in range(n):
            r = http.post("/v2/models/cancer/infer", json=body(rows))
            assert r.status_code == 200, r.text
            variants.append(r.headers.get("x-kubeloop-variant", "stable"))
    return variants


def forward_outcomes(stable: Server) -> dict[str, float | None]:
    """Forwarded requests by outcome; None: none counted (absent, or exported at 0)."""
    return {
        outcome: stable.metric(
            "kubeloop_canary_requests_total", model="cancer", mode="forward", outcome=outcome
        )
        or None
        for outcome in ("ok", "unreachable")
    }


def test_stable_forwards_the_canary_share_over_verified_https(
    https, secret, cancer_model, cancer_rows
):
    args = ("--name", "cancer", "--canary-url", https.url, "--canary-weight", "100")
    with serving(cancer_model, *args, env=secret.env(), verify=secret.trust()) as stable:
        assert set(forwarded(stable, cancer_rows.iloc[:1], 20)) == {"canary"}
        assert forward_outcomes(stable) == {"ok": 20, "unreachable": None}
        assert (https.metric("kubeloop_requests_total", model="cancer", code="200") or 0) > 0


def test_without_ca_crt_the_forwarder_trusts_the_shared_certificate(
    https, secret, cancer_model, cancer_rows, tmp_path
):
    """A Secret with no ca.crt (``kubectl create secret tls``): the stable pod verifies the
    canary with its own tls.crt, the very certificate the canary presents."""
    env = secret.env(KUBELOOP_SERVING_TLS_CA_FILE=str(tmp_path / "absent" / "ca.crt"))
    args = ("--name", "cancer", "--canary-url", https.url, "--canary-weight", "100")
    with serving(cancer_model, *args, env=env, verify=secret.trust()) as stable:
        assert set(forwarded(stable, cancer_rows.iloc[:1], 5)) == {"canary"}
        assert "trusting the server's own certificate" in stable.log


def test_a_canary_whose_certificate_fails_verification_is_never_sent_requests(
    https, secret, cancer_model, cancer_rows, tmp_path
):
    stranger = make_secret(tmp_path, Authority.create("another-ca"), "127.0.0.1")
    env = {**stranger.env(), "KUBELOOP_SERVING_TLS_CA_FILE": str(stranger.ca)}
    args = ("--name", "cancer", "--canary-url", https.url, "--canary-weight", "100")
    before = https.metric("kubeloop_requests_total", model="cancer", code="200")
    with serving(cancer_model, *args, env=env, verify=stranger.trust()) as stable:
        assert set(forwarded(stable, cancer_rows.iloc[:1], 5)) == {"stable"}
        assert forward_outcomes(stable) == {"ok": None, "unreachable": 5}
        assert "CERTIFICATE_VERIFY_FAILED" in stable.log
    assert https.metric("kubeloop_requests_total", model="cancer", code="200") == before


def test_shadow_mirrors_over_verified_https(https, secret, cancer_model, cancer_rows):
    args = ("--name", "cancer", "--canary-url", https.url, "--canary-weight", "100", "--shadow")
    with serving(cancer_model, *args, env=secret.env(), verify=secret.trust()) as stable:
        assert set(forwarded(stable, cancer_rows.iloc[:3], 10)) == {"stable"}
        wait_for(
            "10 mirrored comparisons",
            lambda: stable.metric("kubeloop_shadow_compared_total", result="agree") == 10,
        )
        assert stable.metric("kubeloop_shadow_agreement", model="cancer") == 1.0


@contextlib.contextmanager
def scraping(workdir: Path, server: Server, ca_file: Path) -> Iterator[str]:
    """A real Prometheus scraping ``server`` with the documented TLS job for a pod of the
    deployment "cancer" in "ml", trusting ``ca_file``; yields its URL."""
    pod_labels = {"kubeloop.io/model-deployment": "cancer", "kubeloop.io/role": "stable"}
    pod = {"metadata": {"namespace": "ml", "name": "cancer-stable-0", "labels": pod_labels}}
    address = server.url.removeprefix("https://")
    job = serving_job(
        tls_scrape_job("ml", "cancer", str(ca_file)),
        static_configs=[discovered_pod(address, pod, port="https")],
    )
    with prometheus_scraping(workdir, job) as url:
        yield url


def get(prom: str, path: str, **params: str) -> dict:
    """A Prometheus API answer's data; empty while it is not listening yet."""
    try:
        r = httpx.get(f"{prom}{path}", params=params, timeout=5)
    except httpx.TransportError:
        return {}
    data: dict = r.json()["data"] if r.status_code == 200 else {}
    return data


def query(prom: str, expr: str) -> list[dict]:
    result: list[dict] = get(prom, "/api/v1/query", query=expr).get("result", [])
    return result


def scraped_target(prom: str) -> dict:
    """The one target, once it has been scraped (its health is no longer unknown)."""
    found: list[dict] = []

    def scraped() -> bool:
        found[:] = get(prom, "/api/v1/targets").get("activeTargets", [])
        return len(found) == 1 and found[0]["health"] != "unknown"

    wait_for("Prometheus to scrape its target", scraped, timeout=60)
    return found[0]


def test_prometheus_scrapes_https_with_the_ca_for_the_service_name(https, secret, tmp_path):
    """The certificate names the Services, not the pod address Prometheus dials: the job
    verifies it with the Secret's CA for the Service's name."""
    with scraping(tmp_path, https, secret.ca) as prom:
        target = scraped_target(prom)
        assert target["health"] == "up", target["lastError"]
        assert target["scrapeUrl"].startswith("https://127.0.0.1:")
        assert target["labels"]["job"] == "kubeloop-serving-ml-cancer"
        wait_for("a kubeloop_ series", lambda: query(prom, "kubeloop_model_info") != [])
        labels = query(prom, "kubeloop_model_info")[0]["metric"]
        assert (labels["namespace"], labels["model_deployment"], labels["role"]) == (
            "ml",
            "cancer",
            "stable",
        )


def test_the_tls_scrape_job_refuses_a_certificate_its_ca_did_not_sign(https, tmp_path):
    stranger = make_secret(tmp_path / "stranger", Authority.create("another-ca"), "127.0.0.1")
    with scraping(tmp_path, https, stranger.ca) as prom:
        target = scraped_target(prom)
        assert target["health"] == "down"
        assert "certificate" in target["lastError"], target["lastError"]


# --------------------------------------------------------------- renewal without restarts

_VERSIONS = itertools.count()


def renew(volume: Path, ca: Authority, key: ec.EllipticCurvePrivateKey | None = None) -> Secret:
    """Publish a new key pair for the Service names and loopback as the kubelet updates a
    Secret volume: the files in a new folder, then one atomic swap of the ``..data`` link
    that ``tls.crt`` and ``tls.key`` point through. ``key`` replaces the new pair's key
    (a pair that does not match)."""
    version = volume / f"..{next(_VERSIONS)}"
    issued, cert = ca.issue(name("cancer"), server_names=(*SERVICE_NAMES, "127.0.0.1"))
    write_pair(Pki(version), "tls", key or issued, cert)
    link = volume / "..data_tmp"
    link.symlink_to(version.name)
    os.replace(link, volume / "..data")
    for file in ("tls.crt", "tls.key"):
        if not (volume / file).is_symlink():
            (volume / file).symlink_to(f"..data/{file}")
    return Secret(volume)


def served_serial(server: Server) -> int:
    """The serial number of the certificate a new connection to ``server`` gets."""
    host, port = server.url.removeprefix("https://").split(":")
    pem = ssl.get_server_certificate((host, int(port)))
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


def serial(secret: Secret) -> int:
    return x509.load_pem_x509_certificate(secret.crt.read_bytes()).serial_number


def trusting(ca: Authority) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.load_verify_locations(cadata=ca.cert.public_bytes(serialization.Encoding.PEM).decode())
    return context


FAST_RELOAD = {"KUBELOOP_SERVING_TLS_RELOAD_INTERVAL": "0.1"}
NAME = ("--name", "cancer")


def test_a_renewed_key_pair_is_served_without_a_restart(cancer_model, cancer_rows, tmp_path):
    ca = Authority.create("kubeloop-test-ca")
    volume = renew(tmp_path / "secret", ca)
    env = volume.env(**FAST_RELOAD)
    with serving(cancer_model, "--name", "cancer", env=env, verify=trusting(ca)) as server:
        assert served_serial(server) == serial(volume)
        with server.client() as http:
            assert http.post("/v2/models/cancer/infer", json=body(cancer_rows.iloc[:1])).is_success
            renew(volume.dir, ca)
            wait_for("the new certificate", lambda: served_serial(server) == serial(volume))
            # the connection opened before the renewal, and new ones, both still serve
            assert http.post("/v2/models/cancer/infer", json=body(cancer_rows.iloc[:1])).is_success
        assert server.ready()
        assert "TLS: key pair reloaded" in server.log


def test_a_key_that_does_not_match_is_refused_and_the_old_pair_kept(cancer_model, tmp_path):
    ca = Authority.create("kubeloop-test-ca")
    volume = renew(tmp_path / "secret", ca)
    env = volume.env(**FAST_RELOAD)
    with serving(cancer_model, "--name", "cancer", env=env, verify=trusting(ca)) as server:
        first = serial(volume)
        renew(volume.dir, ca, key=ec.generate_private_key(ec.SECP256R1()))
        wait_for(
            "the refusal in the log", lambda: "key pair changed but was not loaded" in server.log
        )
        assert served_serial(server) == first
        assert server.ready()
        renew(volume.dir, ca)  # a good pair again
        wait_for("the good pair", lambda: served_serial(server) == serial(volume))


def test_the_forwarder_trusts_a_renewed_shared_certificate(cancer_model, cancer_rows, tmp_path):
    """No ca.crt: the stable server trusts its own tls.crt, the canary's certificate. After a
    renewal both serve the new one, and a new canary (new connections) is verified with it."""
    ca = Authority.create("kubeloop-test-ca")
    volume = renew(tmp_path / "secret", ca)
    env = volume.env(KUBELOOP_SERVING_CONFIG_POLL_INTERVAL="0.1", **FAST_RELOAD)
    routing = tmp_path / "routing.json"
    with contextlib.ExitStack() as stack:
        canary = stack.enter_context(serving(cancer_model, *NAME, env=env, verify=trusting(ca)))
        routing.write_text(json.dumps({"canary_url": canary.url, "weight": 100}))
        args = ("--name", "cancer", "--routing-file", str(routing))
        stable = stack.enter_context(serving(cancer_model, *args, env=env, verify=trusting(ca)))
        assert set(forwarded(stable, cancer_rows.iloc[:1], 3)) == {"canary"}
        renew(volume.dir, ca)
        wait_for("the stable trust", lambda: "canary trust reloaded" in stable.log)
        renewed = stack.enter_context(serving(cancer_model, *NAME, env=env, verify=trusting(ca)))
        assert served_serial(renewed) == serial(volume)
        routing.write_text(json.dumps({"canary_url": renewed.url, "weight": 100}))
        wait_for(
            "the new canary to be used",
            lambda: (
                forwarded(stable, cancer_rows.iloc[:1], 1) == ["canary"]
                and (renewed.metric("kubeloop_requests_total", model="cancer", code="200") or 0) > 0
            ),
        )
        assert forward_outcomes(stable)["unreachable"] is None

"""Certificates and keys of a local cluster and its real node, made with ``cryptography``.

One CA signs the API server's serving certificate and every client certificate; the
client certificate's subject is the user (CN) and its groups (O), as the API server's
x509 authenticator reads them. The real node's kubelet and kube-proxy get theirs from
the same CA (:class:`Authority` loaded from the cluster's ``pki/``). ECDSA P-256 keys
keep generation in the milliseconds.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=365)

#: file stems of the CA, the API server's serving pair and the ServiceAccount signing key
CA = "ca"
SERVING = "apiserver"
SERVICE_ACCOUNT = "sa"

#: file stem -> (CN, O) of each client certificate
CLIENTS: dict[str, tuple[str, str | None]] = {
    "admin": ("kubeloop-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
    "kwok": ("kwok-controller", "system:masters"),
    # The API server's client certificate towards kubelets (logs, exec, port-forward)
    # when a real node joins (kubeloop.devcluster.node); kwok nodes never see it.
    "kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
}

#: Names the serving certificate is valid for.
SERVING_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)

#: Addresses the serving certificate is valid for: loopback, and the ``kubernetes``
#: Service's ClusterIP (the first address of controlplane.SERVICE_CIDR), which pods on a real
#: node dial through kube-proxy.
SERVING_IPS = ("127.0.0.1", "::1", "10.96.0.1")


@dataclass(frozen=True)
class Pki:
    """Paths of the pairs a directory holds: ``<stem>.crt`` and ``<stem>.key``."""

    dir: Path

    def crt(self, stem: str) -> Path:
        return self.dir / f"{stem}.crt"

    def key(self, stem: str) -> Path:
        return self.dir / f"{stem}.key"

    @property
    def sa_pub(self) -> Path:
        """The ServiceAccount token verification key (public half of ``sa.key``)."""
        return self.dir / f"{SERVICE_ACCOUNT}.pub"


def name(cn: str, org: str | None = None) -> x509.Name:
    """A subject: common name, and organization (a Kubernetes group) when given."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _alt_names(names: Sequence[str]) -> x509.SubjectAlternativeName:
    """DNS names and IP addresses, told apart by whether they parse as an address."""
    entries: list[x509.GeneralName] = []
    for entry in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            entries.append(x509.DNSName(entry))
    return x509.SubjectAlternativeName(entries)


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
    )


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def write_pair(
    pki: Pki, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> None:
    """``<stem>.key`` (mode 0600) and ``<stem>.crt`` under ``pki.dir``."""
    pki.dir.mkdir(parents=True, exist_ok=True)
    _write_key(key, pki.key(stem))
    pki.crt(stem).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class Authority:
    """A CA certificate and its key: signs the leaf certificates."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, common_name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = name(common_name)
        cert = (
            _builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, pki: Pki) -> Authority:
        """The CA that :func:`generate` wrote under ``pki.dir``."""
        key = serialization.load_pem_private_key(pki.key(CA).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{pki.key(CA)} is not an ECDSA key")
        return cls(x509.load_pem_x509_certificate(pki.crt(CA).read_bytes()), key)

    def issue(
        self, subject: x509.Name, *, server_names: Sequence[str] = ()
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A new key and its certificate: for a server valid for ``server_names`` (DNS
        names or addresses), else for a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        builder = (
            _builder(subject, self.cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(aki, critical=False)
        )
        if server_names:
            builder = builder.add_extension(_alt_names(server_names), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())

    def signed(self, path: Path) -> bool:
        """Whether the certificate in ``path`` exists, is this CA's and has not expired."""
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            cert.verify_directly_issued_by(self.cert)
        except (OSError, ValueError, TypeError, InvalidSignature):
            return False
        return cert.not_valid_after_utc > dt.datetime.now(dt.UTC)


def _write_sa_key(pki: Pki) -> None:
    """The ServiceAccount token signing key and its public half."""
    key = ec.generate_private_key(ec.SECP256R1())
    _write_key(key, pki.key(SERVICE_ACCOUNT))
    pki.sa_pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def generate(directory: Path) -> Pki:
    """Write a CA, the API server's serving pair, client pairs and the SA key pair."""
    pki = Pki(directory)
    ca = Authority.create("kubeloop-dev-ca")
    write_pair(pki, CA, ca.key, ca.cert)
    serving = ca.issue(name("kube-apiserver"), server_names=(*SERVING_DNS, *SERVING_IPS))
    write_pair(pki, SERVING, *serving)
    for who, (cn, org) in CLIENTS.items():
        write_pair(pki, who, *ca.issue(name(cn, org)))
    _write_sa_key(pki)
    return pki


def alt_names(path: Path) -> list[str]:
    """The DNS names and addresses the certificate in ``path`` is valid for."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        *ext.get_values_for_type(x509.DNSName),
        *map(str, ext.get_values_for_type(x509.IPAddress)),
    ]

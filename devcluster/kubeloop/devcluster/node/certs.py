"""The node's certificates and kubeconfigs, from the cluster's CA.

The Node authorizer is not enabled (RBAC only): the kubelet is ``system:node:NAME`` in
``system:nodes``, which a ClusterRoleBinding gives the ``system:node`` role; kube-proxy
is ``system:kube-proxy``, bound to ``system:node-proxier`` by default. The kubelet's
serving certificate is valid for the node's name and address.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from cryptography import x509

from kubeloop.devcluster import pki as pkimod
from kubeloop.devcluster.cluster import kubeconfig_yaml, write_private
from kubeloop.devcluster.node.config import NodeConfig

#: the client certificates that get a kubeconfig
CLIENTS = ("kubelet", "kube-proxy")
SERVING = "kubelet-serving"


def node_certificates(cfg: NodeConfig) -> list[tuple[str, x509.Name, tuple[str, ...]]]:
    """(file stem, subject, server names; none for a client) of each certificate."""
    return [
        ("kubelet", pkimod.name(f"system:node:{cfg.name}", "system:nodes"), ()),
        ("kube-proxy", pkimod.name("system:kube-proxy"), ()),
        (SERVING, pkimod.name(cfg.name), (cfg.name, cfg.ip, "127.0.0.1")),
    ]


def kubeconfig_server(path: Path) -> str | None:
    """The server a kubeconfig points at, or None when it is not there."""
    try:
        doc = yaml.safe_load(path.read_text())
        return str(doc["clusters"][0]["cluster"]["server"])
    except (OSError, yaml.YAMLError, LookupError, TypeError):
        return None


class NodeCredentials:
    """The files under the node's ``pki/`` and its two kubeconfigs."""

    def __init__(self, cfg: NodeConfig, cluster_pki: pkimod.Pki) -> None:
        self.cfg = cfg
        self.cluster_pki = cluster_pki
        self.pki = pkimod.Pki(cfg.path("pki"))

    def current(self, api_port: int) -> bool:
        """Whether the files exist, are signed by the cluster's CA and point at its port
        (a new ``cluster up`` makes a new CA and picks a new port)."""
        ca = pkimod.Authority.load(self.cluster_pki)
        server = f"https://127.0.0.1:{api_port}"
        return all(
            kubeconfig_server(self.cfg.kubeconfig(who)) == server for who in CLIENTS
        ) and all(ca.signed(self.pki.crt(stem)) for stem, _, _ in node_certificates(self.cfg))

    def issue(self, api_port: int) -> None:
        """New keys and certificates from the cluster's CA, and the kubeconfigs."""
        ca = pkimod.Authority.load(self.cluster_pki)
        for stem, subject, names in node_certificates(self.cfg):
            pkimod.write_pair(self.pki, stem, *ca.issue(subject, server_names=names))
        ca_crt = self.cluster_pki.crt(pkimod.CA)
        for who in CLIENTS:
            text = kubeconfig_yaml(
                self.cfg.cluster, api_port, ca_crt, self.pki.crt(who), self.pki.key(who), who
            )
            write_private(self.cfg.kubeconfig(who), text)

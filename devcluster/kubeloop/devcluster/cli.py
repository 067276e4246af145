"""``kubeloop cluster``: a local control plane for development and tests."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import click

from kubeloop.devcluster import realnode
from kubeloop.devcluster.binaries import MissingBinaryError
from kubeloop.devcluster.cluster import ClusterError, DevCluster
from kubeloop.progress import open_progress, progress_option

name_option = click.option(
    "--name",
    default="kubeloop",
    show_default=True,
    envvar="KUBELOOP_CLUSTER",
    help="Cluster name; state lives in $KUBELOOP_CACHE/clusters/NAME (env KUBELOOP_CLUSTER).",
)


def _progress(message: str) -> None:
    click.echo(f"[cluster] {message}", err=True)


@click.group()
def cluster() -> None:
    """Run a local Kubernetes control plane (etcd, kube-apiserver, controller-manager,
    scheduler) with kwok fake nodes, all as local processes on loopback ports."""


@cluster.command()
@name_option
@click.option(
    "--nodes",
    default=None,
    type=click.IntRange(0),
    help="Fake (kwok) nodes  [default: 1, or 0 with --real].",
)
@click.option(
    "--real",
    is_flag=True,
    help="Add a real node (containerd, kubelet, kube-proxy, CoreDNS; as root).",
)
@click.option(
    "--timeout", default=120.0, show_default=True, type=float, help="Seconds to wait for Ready."
)
@progress_option
def up(name: str, nodes: int | None, real: bool, timeout: float, progress_mode: str) -> None:
    """Start the cluster (or reuse it if it runs) and print its kubeconfig path."""
    start = time.monotonic()
    if nodes is None:
        nodes = 0 if real else 1
    # without a live display (not a terminal, --progress none) the log lines go as before
    with open_progress(progress_mode, plain=_progress) as shown:
        try:
            dev = DevCluster(name, log=shown.note, progress=shown)
            kubeconfig = dev.up(nodes=nodes, timeout=timeout)
            if real:
                shown.stage("the real node: containerd, kubelet, kube-proxy, CoreDNS")
                realnode.up(name, shown.note)
        except (ClusterError, MissingBinaryError) as err:
            raise click.ClickException(str(err)) from err
        shown.done()
        shown.note(f"up in {time.monotonic() - start:.1f}s")
    click.echo(str(kubeconfig))


@cluster.command()
@name_option
def down(name: str) -> None:
    """Stop exactly the processes the cluster started and remove its state."""
    try:
        realnode.down_if_owned(name, _progress)
        existed = DevCluster(name, log=_progress).down()
    except ClusterError as err:
        raise click.ClickException(str(err)) from err
    _progress(f"cluster {name!r} {'stopped and removed' if existed else 'was not there'}")


@cluster.command()
@name_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(name: str, as_json: bool) -> None:
    """Show the cluster's processes, server and nodes; exit 1 unless it is running."""
    try:
        st = DevCluster(name).status()
    except ClusterError as err:
        raise click.ClickException(str(err)) from err
    if as_json:
        click.echo(json.dumps(asdict(st), indent=1))
    else:
        click.echo(f"cluster:    {st.name} ({'running' if st.running else 'not running'})")
        click.echo(f"state:      {st.state_dir}")
        if st.server:
            click.echo(f"server:     {st.server}")
            click.echo(f"kubeconfig: {st.kubeconfig}")
        for p in st.processes:
            click.echo(f"  {p['name']:<24} pid {p['pid']:<8} {'up' if p['alive'] else 'DOWN'}")
        for node, ready in sorted(st.nodes.items()):
            click.echo(f"  node {node:<19} {'Ready' if ready else 'NotReady'}")
        if realnode.owner() == name:
            for proc, info in realnode.node(name, _progress).status().items():
                state = "up" if info["alive"] else "DOWN"
                click.echo(f"  {'realnode/' + proc:<24} pid {info['pid']:<8} {state}")
    sys.exit(0 if st.running else 1)


@cluster.command()
@name_option
def kubeconfig(name: str) -> None:
    """Print the path of the cluster's admin kubeconfig."""
    dev = DevCluster(name)
    if not dev.kubeconfig.exists():
        raise click.ClickException(
            f"cluster {name!r} is not up (kubeloop cluster up --name {name})"
        )
    click.echo(str(dev.kubeconfig))


@cluster.command()
@name_option
@click.argument("tarballs", nargs=-1, required=True, type=click.Path(allow_dash=True))
def load(name: str, tarballs: tuple[str, ...]) -> None:
    """Import image tarballs (docker save, OCI; - reads standard input) into the real
    node's containerd: `docker save IMAGE | kubeloop cluster load -`."""
    files = [Path(t) for t in tarballs if t != "-"]
    stream = sys.stdin.buffer if "-" in tarballs else None
    try:
        realnode.load(name, files, stream, _progress)
    except ClusterError as err:
        raise click.ClickException(str(err)) from err
    _progress(f"loaded {', '.join(tarballs)}")

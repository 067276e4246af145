"""``kubeloop gc-artifacts``: delete the model folders a registry retention pruned.

Run by the operator's cleanup Job (the operator never writes the store). Every folder
must lie strictly under ``--under`` (the namespace's ``models/`` prefix): a folder
elsewhere, or one that climbs out with ``..``, is refused before anything is deleted.
A folder already gone counts as deleted, so a rerun of the Job is harmless.
"""

from __future__ import annotations

import json
import sys

import click
import fsspec

from kubeloop.contracts.results import EXIT_BAD_INPUT, EXIT_FAILED


def inside(folder: str, under: str) -> bool:
    """Whether ``folder`` names a folder strictly below ``under``: the same prefix, then
    plain segments only (no ``..``, ``.`` or empty ones)."""
    prefix = under.rstrip("/") + "/"
    if not folder.startswith(prefix):
        return False
    rest = folder[len(prefix) :].rstrip("/")
    return bool(rest) and all(part not in ("", ".", "..") for part in rest.split("/"))


@click.command("gc-artifacts")
@click.option("--under", required=True, help="Prefix every folder must lie under (path or URI).")
@click.argument("folders", nargs=-1, required=True)
def gc_artifacts(under: str, folders: tuple[str, ...]) -> None:
    """Delete model artifact folders a registry retention pruned (only under --under)."""
    outside = [f for f in folders if not inside(f, under)]
    if outside:
        click.echo(f"error: not under {under}: {', '.join(outside)}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    deleted, gone = [], []
    for folder in folders:
        try:
            fs, path = fsspec.core.url_to_fs(folder)
            if fs.exists(path):
                fs.rm(path, recursive=True)
                deleted.append(folder)
            else:
                gone.append(folder)
        except OSError as exc:
            click.echo(f"error: {folder}: {exc}", err=True)
            sys.exit(EXIT_FAILED)
    click.echo(json.dumps({"deleted": deleted, "already_gone": gone}))

"""The error every part of the local cluster raises when something does not come up."""

from __future__ import annotations


class ClusterError(RuntimeError):
    """The cluster (or its real node) could not be started, or is not there."""

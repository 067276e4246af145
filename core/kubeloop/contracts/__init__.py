"""Contracts between the operator and its Jobs and pods, written by one side, read by the other.

- :mod:`~kubeloop.contracts.artifacts`: artifact file names and paths
  (``ArtifactLayout``), ``model.json``/``profile.json`` formats, output tensor names.
- :mod:`~kubeloop.contracts.results`: the typed result a snapshot or trainer Job
  writes as its termination message.
- :mod:`~kubeloop.contracts.routing`: the canary share the operator gives the stable pods.
- :mod:`~kubeloop.contracts.frameworks`: the estimator allow-list.
- :mod:`~kubeloop.contracts.status`: condition types and terminal phases.
- :mod:`~kubeloop.contracts.storage`: the object-store credential variables.
- :mod:`~kubeloop.contracts.generated`: writing or checking committed generated files
  (CRDs, dashboards), the contract between the code and what the chart ships.
"""

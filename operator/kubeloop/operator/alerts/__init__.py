"""Drift to retraining: Prometheus alert rules as code and the Alertmanager webhook receiver."""

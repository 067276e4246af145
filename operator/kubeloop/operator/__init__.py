"""The Kubeloop operator: kopf handlers, pure builders of child objects, status."""

"""Dataset snapshots and training runs: `kubeloop snapshot`, `kubeloop train`."""

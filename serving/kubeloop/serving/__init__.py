"""Kubeloop serving: an onnxruntime inference server speaking the Open Inference
Protocol v2 (and KServe V1), with validation, metrics, inline drift, a prediction
log, feedback, hot reload, canary forwarding and adaptive micro-batching."""

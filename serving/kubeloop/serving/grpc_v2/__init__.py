"""The Open Inference Protocol v2 over gRPC (``GRPCInferenceService``): the .proto, its
generated modules (``make grpc-stubs``), the codec and the ``grpc.aio`` server."""

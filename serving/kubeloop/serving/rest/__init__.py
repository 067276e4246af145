"""The REST transport: the OIP v2 and KServe V1 JSON codecs, the inference path they
share, and the FastAPI routes."""

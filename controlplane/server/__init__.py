"""The control plane's gRPC server: thin servicers over the store and the pure
logic, protobuf conversion at this edge only, health and reflection services,
graceful shutdown."""

"""Flotilla's control plane.

Layers, lowest first (an import-linter contract in pyproject.toml keeps them
pointing one way):

- ``controlplane.api``        generated protobuf / gRPC modules (``make proto``)
- ``controlplane.model``      frozen dataclasses, no I/O
- ``controlplane.manifests``  manifest schemas, validation, references (pure)
- ``controlplane.store``      the resource store (SQLite, WAL)
- ``controlplane.server``     gRPC servicers, protobuf conversion, the server
- ``controlplane.cli``        the ``flotilla`` command

``controlplane.errors`` holds the error tree every layer raises.
"""

__version__ = "0.1.0"

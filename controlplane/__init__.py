"""Flotilla's control plane.

Layers, lowest first (import-linter contracts in pyproject.toml keep them
pointing one way, and keep the pure modules pure):

- ``controlplane.api``        generated protobuf / gRPC modules (``make proto``)
- ``controlplane.model``      frozen dataclasses, every kind's spec schema, the
                              clock, proxy metadata; no I/O
- ``controlplane.manifests``  the document envelope, validation, references (pure)
- ``controlplane.store``      the resource store (SQLite, WAL; replicated on
                              Consul KV) and the follower every loop uses;
  ``controlplane.scheduler`` (pure) and ``controlplane.convert`` beside it
- ``controlplane.controllers``, ``.xds``, ``.identity``, ``.catalog``:
                              the loops and the pure logic they call,
                              independent of each other
- ``controlplane.server``, ``controlplane.client``: the gRPC edges
- ``controlplane.cli``        the ``flotilla`` command

``controlplane.errors`` holds the error tree every layer raises.
"""

__version__ = "0.1.0"

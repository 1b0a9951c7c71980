"""The mesh's xDS side: what each proxy should have (pure), and the cache
that keeps every connected proxy's snapshot current.

- :mod:`mesh` turns stored objects into a ``MeshView`` and an Envoy node
  into a ``Proxy`` (pure);
- :mod:`builder` builds one proxy's ``Snapshot`` from a view (pure, Envoy
  v3 types from ``xds-protos``), :mod:`snapshot` versions and checks it;
- :mod:`cache` holds every connected proxy's snapshot and wakes only the
  streams whose resources changed; the ADS servicer lives in
  ``controlplane.server.xds``.
"""

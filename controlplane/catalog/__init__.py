"""The service catalog: what the mesh runs, published into Consul.

- :mod:`registrations`: pure: the entries Flotilla wants in the catalog (one
  per serving instance, the same endpoints EDS publishes) and the plan that
  turns what the catalog holds into that;
- :mod:`consul`: the Consul adapter (the catalog and transaction APIs
  through the control plane's one Consul client,
  :class:`controlplane.store.consul.ConsulClient`, which maps failures onto
  :mod:`controlplane.errors` with messages that say what is wrong);
- :mod:`registry`: the registry reconciler, the only writer of Flotilla's
  entries in Consul: registers and deregisters them in transactions, keeps
  their checks passing and repairs whatever changed behind its back
  (anti-entropy).

Flotilla's entries live on a catalog node of its own
(``flotilla-<trust domain>``) and carry ``flotilla-managed: "true"`` in their
meta; Flotilla never touches anything else in the catalog.
"""

"""The service catalog: what the mesh runs, published into Consul.

- :mod:`registrations`: pure: the entries Flotilla wants in the catalog (one
  per serving instance, the same endpoints EDS publishes) and the plan that
  turns what the catalog holds into that;
- :mod:`consul`: the Consul adapter (py-consul over the agent HTTP API),
  mapping its failures onto :mod:`controlplane.errors` with messages that say
  what is wrong;
- :mod:`registry`: the registry reconciler, the only writer of Flotilla's
  entries in Consul: registers, deregisters, keeps their TTL checks passing
  and repairs whatever changed behind its back (anti-entropy).

Flotilla owns exactly the entries whose meta says ``flotilla-managed: "true"``;
it never touches anything else in the catalog.
"""

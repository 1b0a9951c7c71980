"""Controllers: level-triggered loops that converge stored intent with what
runs. The store follower (:mod:`controlplane.store.follower`, gated on
leadership) hands them changes; events only enqueue keys on a
:mod:`~controlplane.store.workqueue`; ``reconcile(key)`` re-reads the store
and acts idempotently, and a key that fails backs off alone. Only the leader
runs them.

- :mod:`nodes`: node membership and liveness (the only writer of Node objects)
- :mod:`replicas`: pure decisions: how many instances to create or remove
- :mod:`reconciler`: the Service reconciler, the scheduler call and the plan
  applier (the only writer of placements)
- :mod:`registered`: instances clients register over the API (not run by
  Flotilla), their heartbeats and the reaper that removes them after their TTL
"""

"""The resource store: SQLite in WAL mode in the data dir (the embedded
default; with ``--store consul://`` each replica's copy of a log replicated on
Consul KV: :mod:`consul`, which also holds the control plane's one Consul
client, used by the log, the leader lock and the catalog).

One writer at a time; every write gets a monotonically increasing
resourceVersion and an event row, which is what watches replay. Secrets are
encrypted at rest (AES-GCM) with a key kept beside the database (mode 0600).
:mod:`follower` is how every loop follows the store's events, and
:mod:`workqueue` the keyed queue (per-key backoff, one error policy) a loop
puts the keys those events touch on.
"""

from controlplane.store.sqlite import Admission, Store

__all__ = ["Admission", "Store"]

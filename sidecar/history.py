"""What the agent remembers of its instances across their runs and its own
restarts, in ``<agent data dir>/history/``:

- ``<instance>.json`` (a ``Record``): how often its sidecar Envoy was started
  again, and how its last run ended, so that an agent restarted on the node
  goes on counting and does not run an instance again that its restart
  policy let rest;
- ``<instance>.log``: the last output of a run that ended, which `flotilla
  logs` shows once the runtime's own logs went with the workload (the process
  driver removes the instance's directory, the docker driver its containers).

Bounds: at most ``OUTPUT_BYTES`` of output per instance (its last whole
lines), and the output of at most ``KEPT_OUTPUTS`` instances per node: when
one more run ends, the oldest kept output goes. A new run drops the previous
run's end and output (the runtime has the new run's). An instance's history
goes when the control plane no longer assigns it to the node (``forget``,
``keep_only``).

Contract: only an instance's runner thread writes its history; any thread
may read it. Files are replaced atomically, so a reader sees the old or the
new file whole; a damaged record reads as no history. The history is best
effort: a write that fails is logged, never raised.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Output kept per instance: its last lines up to this many bytes.
OUTPUT_BYTES = 64 * 1024
#: Lines asked of the runtime for them (more than fit, for short lines).
OUTPUT_LINES = 4096
#: Instances per node whose last output is kept.
KEPT_OUTPUTS = 100


@dataclass(frozen=True)
class Ended:
    """How an instance's last run ended."""

    #: The instance's state then: exited, failed, crashloop or unhealthy.
    state: str
    reason: str
    exit_code: int
    #: The app's restarts so far.
    restarts: int
    #: Unix seconds.
    at: float


@dataclass(frozen=True)
class Record:
    """What the agent remembers of one instance (``<instance>.json``)."""

    #: Times the agent started the instance's Envoy again (the app kept running).
    sidecar_restarts: int = 0
    #: How its last run ended; None while one runs (or before the first ends).
    ended: Ended | None = None


def last_lines(data: bytes, count: int) -> bytes:
    """The last ``count`` lines of ``data`` (all of it for 0)."""
    if count <= 0:
        return data
    return b"".join(data.splitlines(keepends=True)[-count:])


class History:
    """The history of a node's instances, in the directory ``root``."""

    def __init__(self, root: Path, output_bytes: int = OUTPUT_BYTES,
                 kept_outputs: int = KEPT_OUTPUTS) -> None:
        self.root = root
        self.output_bytes = output_bytes
        self.kept_outputs = kept_outputs
        root.mkdir(parents=True, exist_ok=True)
        #: Serializes pruning (several runners may end runs at once).
        self._lock = threading.Lock()

    def get(self, instance_id: str) -> Record:
        path = self._path(instance_id, ".json")
        try:
            raw = json.loads(path.read_text())
            ended = raw.get("ended")
            return Record(raw.get("sidecar_restarts", 0),
                          Ended(**ended) if ended is not None else None)
        except (OSError, ValueError, TypeError, AttributeError):
            return Record()

    def put(self, instance_id: str, record: Record) -> None:
        self._write(self._path(instance_id, ".json"), json.dumps(asdict(record)).encode())

    def keep_output(self, instance_id: str, chunks: Iterable[bytes]) -> None:
        """Keep the end of ``chunks`` (a run's output) as the instance's last
        output; reads them through, holding at most twice the bound."""
        kept = bytearray()  # the bound, and the byte before it
        for chunk in chunks:
            kept += chunk
            if len(kept) > 2 * self.output_bytes:
                del kept[:-(self.output_bytes + 1)]
        data = bytes(kept[-(self.output_bytes + 1):])
        if len(data) > self.output_bytes:  # cut: whole lines only, or a long line's end
            first_end = data.find(b"\n", 0, len(data) - 1)
            data = data[first_end + 1:] if first_end >= 0 else data[1:]
        path = self._path(instance_id, ".log")
        with self._lock:
            self._write(path, data)
            self._prune(keep=path)

    def output(self, instance_id: str) -> bytes | None:
        """The instance's kept output; None when none is kept."""
        try:
            return self._path(instance_id, ".log").read_bytes()
        except OSError:
            return None

    def drop_output(self, instance_id: str) -> None:
        _remove(self._path(instance_id, ".log"))

    def forget(self, instance_id: str) -> None:
        for suffix in (".json", ".log"):
            _remove(self._path(instance_id, suffix))

    def keep_only(self, instance_ids: Collection[str]) -> None:
        """Forget every instance but these (the ones assigned to the node)."""
        for path in self._files():
            if path.stem not in instance_ids:
                _remove(path)

    # --- internals ---------------------------------------------------------------

    def _path(self, instance_id: str, suffix: str) -> Path:
        if not instance_id or "/" in instance_id or instance_id.startswith("."):
            raise ValueError(f"not an instance id: {instance_id!r}")
        return self.root / (instance_id + suffix)

    def _files(self) -> list[Path]:
        try:
            return [p for p in self.root.iterdir() if p.suffix in (".json", ".log")]
        except OSError:
            return []

    def _prune(self, keep: Path) -> None:
        """At most ``kept_outputs`` outputs: the oldest go first."""
        outputs: list[tuple[float, Path]] = []
        for path in self._files():
            if path.suffix == ".log" and path != keep:
                try:
                    outputs.append((path.stat().st_mtime, path))
                except OSError:
                    continue
        for _, path in sorted(outputs)[:max(0, len(outputs) + 1 - self.kept_outputs)]:
            _remove(path)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as error:
            log.warning("cannot keep %s: %s", path, error)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as error:
        log.warning("cannot forget %s: %s", path, error)

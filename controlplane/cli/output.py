"""How resources are printed: tables (kubectl-like), JSON and YAML.

Secret values never reach this module: the server redacts them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from controlplane.manifests.document import spec_json, spec_of
from controlplane.model import node_state_of
from controlplane.model.specs import GatewaySpec, ServiceSpec

Doc = dict[str, Any]


def _age(doc: Doc) -> str:
    stamp = doc["metadata"].get("createTime")
    if not stamp:
        return "-"
    created = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    seconds = max(0, int(time.time() - created))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _workload(spec: ServiceSpec, name: str) -> str:
    if spec.external is not None:
        return "consul:" + (spec.external.service or name)
    if spec.image is not None:
        return spec.image
    if spec.command is not None:
        return " ".join(spec.command)[:40]
    return "<registered>"


def _listeners(spec: GatewaySpec) -> str:
    return ",".join(f"{listener.port}/{listener.protocol}" for listener in spec.listeners)


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items()) or "-"


#: A column: its head, and its cell from the document and its decoded spec
#: (the kind's model, see :func:`controlplane.manifests.document.spec_of`).
Column = tuple[str, Callable[[Doc, Any], str]]

COLUMNS: dict[str, list[Column]] = {
    "Service": [
        ("REPLICAS", lambda d, s: str(s.desired_replicas)),
        ("WORKLOAD", lambda d, s: _workload(s, d["metadata"]["name"])),
        ("PORT", lambda d, s: f"{s.port}/{s.protocol}" if s.port is not None else "-"),
        ("UPSTREAMS", lambda d, s: ",".join(u.name for u in s.upstreams) or "-"),
    ],
    "TrafficPolicy": [
        ("DESTINATION", lambda d, s: s.destination),
        ("LB", lambda d, s: s.load_balancer.algorithm),
        ("SUBSETS", lambda d, s: ",".join(subset.name for subset in s.subsets) or "-"),
    ],
    "Intention": [
        ("SOURCE", lambda d, s: s.source),
        ("DESTINATION", lambda d, s: s.destination),
        ("ACTION", lambda d, s: s.action),
        ("L7", lambda d, s: str(len(s.http)) if s.http else "-"),
    ],
    "Gateway": [("LISTENERS", lambda d, s: _listeners(s))],
    "ConfigMap": [("KEYS", lambda d, s: str(len(s.data)))],
    "Secret": [
        ("TYPE", lambda d, s: s.type),
        ("KEYS", lambda d, s: str(len(s.data))),
    ],
    "Node": [
        ("STATE", lambda d, s: node_state_of(s, d.get("status") or {}).value),
        ("ADDRESS", lambda d, s: s.address),
        ("CPU", lambda d, s: f"{s.capacity.cpu}m"),
        ("MEMORY", lambda d, s: f"{s.capacity.memory}Mi"),
        ("DRIVERS", lambda d, s: ",".join(s.drivers)),
        ("LABELS", lambda d, s: _labels(s.labels)),
    ],
    "Instance": [
        ("SERVICE", lambda d, s: s.service),
        ("STATE", lambda d, s: d.get("status", {}).get("state", "pending")),
        ("NODE", lambda d, s: s.node or "-"),
        ("ADDRESS", lambda d, s: _endpoint(d.get("status", {}))),
        ("RESTARTS", lambda d, s: _restarts(d.get("status", {}))),
        ("REASON", lambda d, s: str(d.get("status", {}).get("reason", "")) or "-"),
    ],
    "Certificate": [
        ("IDENTITY", lambda d, s: s.identity),
        ("SERIAL", lambda d, s: s.serial[:16]),
        ("EXPIRES", lambda d, s: s.not_after),
        ("NODE", lambda d, s: s.node or "-"),
        ("INSTANCE", lambda d, s: s.instance or (f"client {s.client}" if s.client else "-")),
    ],
}


def _restarts(status: dict[str, Any]) -> str:
    """The app's restarts and its sidecar's, summed as Kubernetes sums a pod's
    containers: ``3 (1 sidecar)``."""
    app, sidecar = int(status.get("restarts", 0)), int(status.get("sidecarRestarts", 0))
    return f"{app + sidecar} ({sidecar} sidecar)" if sidecar else str(app)


def _endpoint(status: dict[str, Any]) -> str:
    address, port = status.get("address"), status.get("port")
    if not address:
        return "-"
    return f"{address}:{port}" if port else str(address)


def table(docs: Sequence[Doc], console: Console, *, namespaces: bool) -> None:
    """One table per kind, in the order the kinds first appear."""
    kinds: dict[str, list[Doc]] = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    for index, (kind, items) in enumerate(kinds.items()):
        if index:
            console.print()
        grid = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        heads = (["NAMESPACE"] if namespaces else []) + ["NAME"]
        if len(kinds) > 1:
            heads[-1] = f"NAME ({kind})"
        columns = COLUMNS.get(kind, [])
        for head in heads + [c[0] for c in columns] + ["AGE"]:
            grid.add_column(head, no_wrap=True)
        for doc in items:
            meta = doc["metadata"]
            row = ([meta["namespace"]] if namespaces else []) + [meta["name"]]
            spec = spec_of(doc)
            grid.add_row(*row, *(fn(doc, spec) for _, fn in columns), _age(doc))
        console.print(grid)


def as_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


def as_yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=True, default_flow_style=False)


def listing(docs: Sequence[Doc]) -> Doc:
    return {"apiVersion": "flotilla.dev/v1", "kind": "List", "items": list(docs)}


def describe(doc: Doc, console: Console) -> None:
    """A human summary: metadata first, then the spec and status as YAML."""
    meta = doc["metadata"]
    lines = [
        ("Name", meta["name"]),
        ("Namespace", meta["namespace"]),
        ("Kind", doc["kind"]),
        ("Labels", ", ".join(f"{k}={v}" for k, v in meta.get("labels", {}).items()) or "<none>"),
        ("Annotations",
         ", ".join(f"{k}={v}" for k, v in meta.get("annotations", {}).items()) or "<none>"),
        ("UID", meta.get("uid", "")),
        ("Resource version", str(meta.get("resourceVersion", ""))),
        ("Generation", str(meta.get("generation", ""))),
        ("Created", f"{meta.get('createTime', '-')} ({_age(doc)} ago)"),
        ("Updated", meta.get("updateTime", "-")),
    ]
    width = max(len(k) for k, _ in lines) + 2
    for key, value in lines:
        console.print(f"[bold]{key + ':':<{width}}[/bold]{value}", highlight=False)
    console.print("[bold]Spec:[/bold]")
    console.print(_indent(as_yaml(spec_json(doc))), highlight=False, markup=False)
    console.print("[bold]Status:[/bold]")
    status = doc.get("status")
    console.print(_indent(as_yaml(status)) if status else "  <none>", highlight=False,
                  markup=False)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip().splitlines())

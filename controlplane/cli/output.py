"""How resources are printed: tables (kubectl-like), JSON and YAML.

Secret values never reach this module: the server redacts them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from controlplane.model import node_state

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


def _workload(spec: dict[str, Any], name: str) -> str:
    if "external" in spec:
        return "consul:" + str(spec["external"].get("service") or name)
    if "image" in spec:
        return str(spec["image"])
    if "command" in spec:
        return " ".join(spec["command"])[:40]
    return "<registered>"


def _listeners(spec: dict[str, Any]) -> str:
    return ",".join(f"{lst['port']}/{lst['protocol']}" for lst in spec.get("listeners", []))


Column = tuple[str, Callable[[Doc], str]]

COLUMNS: dict[str, list[Column]] = {
    "Service": [
        ("REPLICAS", lambda d: str(d["spec"].get("replicas", 0))),
        ("WORKLOAD", lambda d: _workload(d["spec"], d["metadata"]["name"])),
        ("PORT", lambda d: f"{d['spec']['port']}/{d['spec']['protocol']}"
         if "port" in d["spec"] else "-"),
        ("UPSTREAMS", lambda d: ",".join(u["name"] for u in d["spec"].get("upstreams", []))
         or "-"),
    ],
    "TrafficPolicy": [
        ("DESTINATION", lambda d: d["spec"]["destination"]),
        ("LB", lambda d: d["spec"]["loadBalancer"]["algorithm"]),
        ("SUBSETS", lambda d: ",".join(s["name"] for s in d["spec"].get("subsets", [])) or "-"),
    ],
    "Intention": [
        ("SOURCE", lambda d: d["spec"]["source"]),
        ("DESTINATION", lambda d: d["spec"]["destination"]),
        ("ACTION", lambda d: d["spec"]["action"]),
        ("L7", lambda d: str(len(d["spec"].get("http", []))) if d["spec"].get("http") else "-"),
    ],
    "Gateway": [("LISTENERS", lambda d: _listeners(d["spec"]))],
    "ConfigMap": [("KEYS", lambda d: str(len(d["spec"].get("data", {}))))],
    "Secret": [
        ("TYPE", lambda d: d["spec"].get("type", "opaque")),
        ("KEYS", lambda d: str(len(d["spec"].get("data", {})))),
    ],
    "Node": [
        ("STATE", lambda d: node_state(d["spec"], d.get("status", {})).value),
        ("ADDRESS", lambda d: d["spec"].get("address", "")),
        ("CPU", lambda d: f"{d['spec'].get('capacity', {}).get('cpu', 0)}m"),
        ("MEMORY", lambda d: f"{d['spec'].get('capacity', {}).get('memory', 0)}Mi"),
        ("DRIVERS", lambda d: ",".join(d["spec"].get("drivers", []))),
        ("LABELS", lambda d: ",".join(f"{k}={v}" for k, v in d["spec"].get("labels", {}).items())
         or "-"),
    ],
    "Instance": [
        ("SERVICE", lambda d: d["spec"]["service"]),
        ("STATE", lambda d: d.get("status", {}).get("state", "pending")),
        ("NODE", lambda d: d["spec"].get("node") or "-"),
        ("ADDRESS", lambda d: _endpoint(d.get("status", {}))),
        ("RESTARTS", lambda d: _restarts(d.get("status", {}))),
        ("REASON", lambda d: str(d.get("status", {}).get("reason", "")) or "-"),
    ],
    "Certificate": [
        ("IDENTITY", lambda d: d["spec"]["identity"]),
        ("SERIAL", lambda d: d["spec"]["serial"][:16]),
        ("EXPIRES", lambda d: d["spec"]["notAfter"]),
        ("NODE", lambda d: d["spec"]["node"]),
        ("INSTANCE", lambda d: d["spec"].get("instance") or "-"),
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
            grid.add_row(*row, *(fn(doc) for _, fn in columns), _age(doc))
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
    console.print(_indent(as_yaml(doc["spec"])), highlight=False, markup=False)
    console.print("[bold]Status:[/bold]")
    status = doc.get("status")
    console.print(_indent(as_yaml(status)) if status else "  <none>", highlight=False,
                  markup=False)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip().splitlines())

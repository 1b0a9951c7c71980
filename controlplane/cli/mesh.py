"""Commands about the mesh: proxy status and config, proxyless bootstraps."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from controlplane import errors
from controlplane.cli.main import DESCRIBE_MORE, OUTPUT, _emit, cli, client_of, out
from controlplane.client import Client, ProxyStatus
from controlplane.identity.ca import new_key_and_csr, spiffe_id
from controlplane.manifests.document import spec_of, typed_spec
from controlplane.model import Resource
from controlplane.model.specs import CertificateSpec, IntentionSpec
from controlplane.xds.intentions import DENY, Request, decide, matches, qualify, ranked
from controlplane.model.proxy import PROXYLESS, SIDECAR, Proxy, proxy_metadata

#: Envoy config dump sections, by the name `proxy-config` takes.
SECTIONS = {
    "listeners": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
    "clusters": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
    "endpoints": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
    "routes": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
}


def _since(proxy: ProxyStatus) -> str:
    seconds = max(0, int(time.time() - proxy.connected_since.ToSeconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def sync_state(proxy: ProxyStatus) -> str:
    if proxy.last_nack_error:
        return "NACKED"
    if proxy.synced_version >= proxy.view_version and not proxy.pending:
        return "SYNCED"
    return "PENDING"


@cli.command("proxy-status")
@OUTPUT
@click.pass_context
def proxy_status(ctx: click.Context, output: str) -> None:
    """Every proxy connected to the xDS server: what it ACKed, what is pending,
    its last NACK."""
    proxies = sorted(client_of(ctx).proxies(), key=lambda p: (p.namespace, p.service, p.id))
    if output in ("json", "yaml"):
        from google.protobuf import json_format

        _emit(output, [json_format.MessageToDict(p) for p in proxies], single=False)
        return
    if output == "name":
        for proxy in proxies:
            out.print(proxy.id, markup=False)
        return
    if not proxies:
        out.print("No proxies connected.")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("PROXY", "KIND", "SERVICE", "NODE", "XDS", "CONNECTED", "STATUS",
                   "CDS", "EDS", "LDS", "RDS", "PENDING", "LAST NACK"):
        table.add_column(column, overflow="fold" if column == "LAST NACK" else "ellipsis")
    for p in proxies:
        acked = dict(p.acked_versions)
        table.add_row(
            p.id, p.kind, f"{p.namespace}/{p.service}", p.node or "-", p.protocol, _since(p),
            sync_state(p),
            *(acked.get(t, "-")[:8] or "-" for t in ("clusters", "endpoints", "listeners",
                                                       "routes")),
            ",".join(p.pending) or "-", p.last_nack_error or "-",
        )
    out.print(table)
    for p in proxies:  # what a proxy does instead of what a policy asks
        for note in p.notes:
            out.print(f"note: {p.id} ({p.kind} {p.namespace}/{p.service}): {note}",
                      markup=False)


@cli.command("proxy-config")
@click.argument("instance")
@click.argument("section", required=False, type=click.Choice(sorted(SECTIONS)))
@click.option("-n", "--namespace", default="default", show_default=True)
@OUTPUT
@click.pass_context
def proxy_config(ctx: click.Context, instance: str, section: str | None, namespace: str,
                 output: str) -> None:
    """The live config of INSTANCE's Envoy, read from its admin API:
    listeners, clusters, endpoints and routes (or one SECTION)."""
    client = client_of(ctx)
    dump = client.proxy_config(client.get("Instance", instance, namespace))
    chosen = [section] if section else ["listeners", "routes", "clusters", "endpoints"]
    parts = {name: _section(dump, SECTIONS[name]) for name in chosen}
    if output in ("json", "yaml"):
        _emit(output, [parts[chosen[0]]] if section else [parts], single=True)
        return
    for name in chosen:
        rows = list(_summaries(name, parts[name]))
        table = Table(title=name.upper(), title_justify="left", box=None, pad_edge=False,
                      header_style="bold")
        for column in ("NAME", "DETAIL", "VERSION"):
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        out.print(table)


def _section(dump: dict[str, Any], type_url: str) -> dict[str, Any]:
    for config in dump.get("configs", []):
        if config.get("@type") == type_url:
            return dict(config)
    return {}


def _summaries(name: str, part: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    if name == "listeners":
        for entry in part.get("dynamic_listeners", []):
            active = entry.get("active_state") or entry.get("warming_state") or {}
            listener = active.get("listener", {})
            where = listener.get("address", {}).get("socket_address", {})
            detail = f"{where.get('address', '')}:{where.get('port_value', '')}" if where \
                else "api listener"
            rows.append((entry.get("name", ""), detail, active.get("version_info", "")))
    elif name == "clusters":
        for entry in part.get("dynamic_active_clusters", []):
            cluster = entry.get("cluster", {})
            rows.append((cluster.get("name", ""), f"{cluster.get('type', 'EDS')} "
                         f"{cluster.get('lb_policy', 'ROUND_ROBIN')}",
                         entry.get("version_info", "")))
        for entry in part.get("static_clusters", []):
            rows.append((entry.get("cluster", {}).get("name", ""), "static", ""))
    elif name == "endpoints":
        for entry in part.get("dynamic_endpoint_configs", []):
            assignment = entry.get("endpoint_config", {})
            hosts = []
            for group in assignment.get("endpoints", []):
                for lb in group.get("lb_endpoints", []):
                    endpoint = lb.get("endpoint", {})
                    where = endpoint.get("address", {}).get("socket_address", {})
                    hosts.append(f"{where.get('address')}:{where.get('port_value')}"
                                 f" ({endpoint.get('hostname', '?')})")
            rows.append((assignment.get("cluster_name", ""), ", ".join(hosts) or "(none)",
                         entry.get("version_info", "")))
    elif name == "routes":
        for entry in part.get("dynamic_route_configs", []):
            config = entry.get("route_config", {})
            routes = [f"{r.get('match', {}).get('prefix', '?')} -> "
                      f"{r.get('route', {}).get('cluster', '?')}"
                      for host in config.get("virtual_hosts", []) for r in host.get("routes", [])]
            rows.append((config.get("name", ""), ", ".join(routes),
                         entry.get("version_info", "")))
    return rows


def _certificate_order(doc: dict[str, Any]) -> tuple[str, str]:
    spec = typed_spec(doc, CertificateSpec)  # sort calls a key once per item
    return spec.identity, spec.not_after


@cli.command()
@click.option("-n", "--namespace", default=None, help="Only this namespace [default: all].")
@OUTPUT
@click.pass_context
def certs(ctx: click.Context, namespace: str | None, output: str) -> None:
    """The service certificates the mesh CA issued: identity, serial, expiry,
    node and instance (private keys never leave their nodes)."""
    found, _ = client_of(ctx).list("Certificate", namespace or "")
    found.sort(key=_certificate_order)
    if not found and output == "table":
        out.print("No certificates issued.")
        return
    _emit(output, found, single=False, namespaces=namespace is None)


@cli.command()
@click.option("--proxyless", is_flag=True, help="A bootstrap for a gRPC client using "
              "GRPC_XDS_BOOTSTRAP and xds:///SERVICE targets.")
@click.option("--name", default="client", show_default=True,
              help="The client's name, shown by proxy-status.")
@click.option("-n", "--namespace", default="default", show_default=True,
              help="Where bare xds:///NAME targets resolve.")
@click.option("-o", "--output", "path", type=click.Path(path_type=Path), default=None,
              help="Write it to this file [default: stdout].")
@click.option("--keep-renewed", is_flag=True,
              help="Stay running: renew the client's certificate at half-life and follow root "
              "rotations (the mesh runs mTLS; gRPC reloads the files).")
@click.pass_context
def bootstrap(ctx: click.Context, proxyless: bool, name: str, namespace: str,
              path: Path | None, keep_renewed: bool) -> None:
    """Write an xDS bootstrap for a client outside the mesh's sidecars."""
    if not proxyless:
        raise click.UsageError("only --proxyless bootstraps are written by hand: sidecars and "
                               "gateways get theirs from their agent")
    if keep_renewed and path is None:
        raise click.UsageError("--keep-renewed needs -o FILE: the certificate files are kept "
                               "next to it")
    proxy = Proxy(id=f"{name}~{uuid.uuid4().hex[:8]}", kind=PROXYLESS, namespace=namespace,
                  name=name)
    document = {
        "xds_servers": [{
            "server_uri": ctx.find_root().obj["server"],
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {"id": proxy.id, "cluster": name, "metadata": proxy_metadata(proxy),
                 "locality": {}},
    }
    client = client_of(ctx)
    settings = client.mesh_settings()
    files: ClientFiles | None = None
    if settings.mtls:
        if path is None:
            raise click.UsageError("the mesh runs mTLS: give -o FILE, the client's key and "
                                   "certificates are written next to it")
        files = ClientFiles(client, spiffe_id(settings.trust_domain, namespace, name), path)
        files.renew()
        document["certificate_providers"] = files.provider()
    elif keep_renewed:
        raise click.UsageError("--keep-renewed: the mesh runs without mTLS, so the client "
                               "has no certificate to renew")
    text = json.dumps(document, indent=2) + "\n"
    if path is None:
        out.print(text, markup=False, end="")
        return
    try:
        path.write_text(text)
    except OSError as error:
        raise errors.UserError(f"cannot write {path}: {error.strerror}") from None
    out.print(f"wrote {path}: export GRPC_XDS_BOOTSTRAP={path} and dial xds:///SERVICE"
              + (" with grpc.xds_channel_credentials (the mesh runs mTLS)"
                 if files is not None else ""))
    if keep_renewed and files is not None:
        out.print(f"keeping {files.certificate} renewed (until interrupted)")
        files.keep_renewed()


class ClientFiles:
    """A proxyless client's key (made here), its certificate from the mesh CA
    and the trust bundle, as files next to the bootstrap for gRPC's
    file_watcher certificate provider; renewed at half-life and when the
    mesh's roots change (``keep_renewed``)."""

    def __init__(self, client: Client, identity: str, path: Path) -> None:
        self._client = client
        self.identity = identity
        self.key = path.with_suffix(".key")
        self.certificate = path.with_suffix(".crt")
        self.bundle = path.with_suffix(".ca.crt")
        self._renew_at = 0.0
        self._root = ""
        self._ttl = 60.0

    def provider(self) -> dict[str, Any]:
        files = {"private_key_file": self.key, "certificate_file": self.certificate,
                 "ca_certificate_file": self.bundle}
        # gRPC re-reads the files this often: well within half a certificate's life.
        refresh = max(1, min(60, int(self._ttl / 10)))
        return {"default": {"plugin_name": "file_watcher", "config": {
            **{key: str(value.resolve()) for key, value in files.items()},
            "refresh_interval": f"{refresh}s"}}}

    def renew(self) -> None:
        _, _, rest = self.identity.partition("/ns/")
        namespace, _, name = rest.partition("/svc/")
        key_pem, csr_pem = new_key_and_csr(self.identity)
        signed = self._client.sign_client(namespace, name, csr_pem)
        now = time.time()
        self._ttl = max(1.0, signed.not_after.seconds - now)
        self._renew_at, self._root = now + self._ttl / 2, signed.root
        # The key and certificate change together: new files, then renamed over the old.
        self._write({self.key: key_pem, self.certificate: signed.certificate_pem,
                     self.bundle: signed.trust_bundle_pem})

    def _write(self, contents: dict[Path, str]) -> None:
        try:
            for target, text in contents.items():
                fd = os.open(f"{target}.new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(text)
            for target in contents:
                os.replace(f"{target}.new", target)
        except OSError as error:
            raise errors.UserError(f"cannot write {target}: {error.strerror}") from None

    def keep_renewed(self, poll: float = 1.0) -> None:
        """Until interrupted: the bundle as the mesh trusts it now, and a
        certificate not past half its life and signed by the active root."""
        away = False
        while True:
            time.sleep(poll)
            try:
                trust = self._client.trust_bundle()
                if trust.bundle_pem != self.bundle.read_text():
                    self._write({self.bundle: trust.bundle_pem})
                if time.time() >= self._renew_at or trust.active_root != self._root:
                    self.renew()
                    out.print(f"renewed {self.certificate} (root {self._root[:12]})")
                away = False
            except errors.TemporaryError as error:
                if not away:
                    out.print(f"warning: {error}; keeping the current certificate")
                away = True


@cli.group()
def intentions() -> None:
    """Who may call whom: check a call against the intentions."""


def _service(value: str, namespace: str) -> tuple[str, str]:
    ns, _, name = value.rpartition("/")
    return (ns or namespace, name)


@intentions.command("check")
@click.argument("source")
@click.argument("destination")
@click.option("-n", "--namespace", default="default", show_default=True,
              help="The namespace of SOURCE and DESTINATION given without one.")
@click.option("--path", default=None, help="An HTTP request path (L7 intentions).")
@click.option("--method", default=None, help="An HTTP method (default GET with --path).")
@click.option("--header", "headers", multiple=True, metavar="NAME=VALUE",
              help="A request header (repeatable).")
@click.pass_context
def check(ctx: click.Context, source: str, destination: str, namespace: str, path: str | None,
          method: str | None, headers: tuple[str, ...]) -> None:
    """Would SOURCE's call to DESTINATION be allowed? Prints the decision and
    the intention (or the mesh-wide default) that made it; exit code 0 when
    allowed, 1 when denied."""
    client = client_of(ctx)
    settings = client.mesh_settings()
    found, _ = client.list("Intention", "")
    resources = [Resource(kind="Intention", name=d["metadata"]["name"],
                          namespace=d["metadata"]["namespace"], spec=spec_of(d)) for d in found]
    request = None
    if path is not None or method is not None or headers:
        pairs = dict(h.partition("=")[::2] for h in headers)
        request = Request(path or "/", (method or "GET").upper(), pairs)
    decision = decide(ranked(resources), _service(source, namespace),
                      _service(destination, namespace), request, settings.default_intention)
    call = f"{'/'.join(_service(source, namespace))} -> {'/'.join(_service(destination, namespace))}"
    if request is not None:
        call += f" {request.method} {request.path}"
    out.print(f"{call}: {decision.explain()}", markup=False)
    if not settings.mtls:
        out.print("(not enforced: the server runs with --no-mtls)", markup=False)
    if decision.action == DENY:
        ctx.exit(1)


def affected_proxies(client: Client, doc: dict[str, Any]) -> None:
    """The sidecars an intention applies to, and whether they run it yet."""
    namespace = doc["metadata"]["namespace"]
    destination = qualify(typed_spec(doc, IntentionSpec).destination, namespace)
    version = int(doc["metadata"].get("resourceVersion", 0))
    proxies = [p for p in client.proxies()
               if p.kind == SIDECAR and matches(destination, (p.namespace, p.service))]
    if not proxies:
        out.print("Affected proxies: none connected")
        return
    table = Table(title="Affected proxies", title_justify="left", box=None, pad_edge=False,
                  header_style="bold")
    for column in ("PROXY", "SERVICE", "NODE", "HAS IT"):
        table.add_column(column)
    for proxy in sorted(proxies, key=lambda p: p.id):
        state = ("NACKED: " + proxy.last_nack_error if proxy.last_nack_error
                 else "yes (ACKed)" if proxy.synced_version >= version else "not yet")
        table.add_row(proxy.id, f"{proxy.namespace}/{proxy.service}", proxy.node or "-", state)
    out.print(table)


@cli.group()
def ca() -> None:
    """The mesh's certificate authority: its roots and their rotation."""


def _print_bundle(bundle: Any) -> None:
    roots = ", ".join(f"{r}{' (signs)' if r == bundle.active_root else ''}"
                      for r in bundle.roots)
    out.print(f"roots: {roots}", markup=False)
    out.print(f"rotation: {bundle.rotation or 'none'}", markup=False)


@ca.command("status")
@click.pass_context
def ca_status(ctx: click.Context) -> None:
    """The trusted roots, which one signs, and any rotation in progress."""
    _print_bundle(client_of(ctx).trust_bundle())


@ca.command("rotate")
@click.option("--wait", is_flag=True, help="Return once the old root is gone.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=300.0, show_default=True)
@click.pass_context
def ca_rotate(ctx: click.Context, wait: bool, wait_timeout: float) -> None:
    """Rotate the root: the new root joins every proxy's trust bundle, then
    signs every leaf anew, and the old root leaves last; no request fails."""
    client = client_of(ctx)
    bundle = client.rotate_root()
    _print_bundle(bundle)
    if not wait:
        return
    deadline = time.monotonic() + wait_timeout
    while bundle.rotation and time.monotonic() < deadline:
        time.sleep(0.5)
        bundle = client.trust_bundle()
    if bundle.rotation:
        raise errors.FailedPrecondition(
            f"the rotation is still {bundle.rotation} after {wait_timeout:g}s: see which "
            "instances lag with `flotilla get instances -o yaml` (status.certificate)")
    out.print(f"rotated: root {bundle.active_root} signs every leaf; the old root is gone",
              markup=False)


DESCRIBE_MORE["Intention"] = affected_proxies

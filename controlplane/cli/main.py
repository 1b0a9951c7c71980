"""Entry point of the ``flotilla`` command."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from controlplane import __version__, errors
from controlplane.cli import output
from controlplane.client import DEFAULT_SERVER, Client, Rollout, ServerUnavailable, SyncState
from controlplane.manifests import parse_yaml, resolve_kind, to_resources
from controlplane.model.limits import DEFAULT_MAX_REPLICAS, HARD_MAX_REPLICAS
from controlplane.model.durations import parse_duration
from controlplane.model import KINDS, NODE_NAMESPACE, SERVICE_LABEL, SYSTEM_KINDS

EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

#: Tables are never cut to a terminal's width when the output is piped.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 10_000)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def default_data_dir(name: str) -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "flotilla" / name


class FlotillaGroup(click.Group):
    """Turns Flotilla's errors into one clear line and an exit code; no tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return result
        except ServerUnavailable as error:
            err.print(f"[red]error:[/red] {error}", markup=True)
            err.print(
                "  start one with `flotilla dev` (or `flotilla server`), or point --server / "
                "FLOTILLA_SERVER at yours"
            )
            ctx.exit(EXIT_UNAVAILABLE)
        except errors.FlotillaError as error:
            err.print(f"[red]error:[/red] {error}", markup=True)
            ctx.exit(EXIT_USER_ERROR)


_LOG_LEVEL = "flotilla.log_level"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def _log_level(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        logging.getLogger().setLevel(value.upper())
        ctx.find_root().meta[_LOG_LEVEL] = value


def log_level_option() -> click.Option:
    """``--log-level``, which every command takes (before or after its name)."""
    return click.Option(["--log-level"], type=click.Choice(["debug", "info", "warning", "error"],
                                                             case_sensitive=False),
                        envvar="FLOTILLA_LOG_LEVEL", expose_value=False, callback=_log_level,
                        help="Log this much and more on stderr (env FLOTILLA_LOG_LEVEL) "
                             "[default: info for server, agent and dev; else warning].")


def default_log_level(ctx: click.Context, level: int) -> None:
    """A long-running command's level, unless --log-level said otherwise."""
    if _LOG_LEVEL not in ctx.find_root().meta:
        logging.getLogger().setLevel(level)


def with_log_level(command: click.Command) -> None:
    """Give *command* and every command under it ``--log-level``."""
    if not any(p.name == "log_level" for p in command.params):
        command.params.append(log_level_option())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            with_log_level(sub)


@click.group(cls=FlotillaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server", envvar="FLOTILLA_SERVER", default=DEFAULT_SERVER, show_default=True,
    help="Address of the control plane (env FLOTILLA_SERVER).",
)
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for each API call.")
@click.version_option(__version__, prog_name="flotilla")
@click.pass_context
def cli(ctx: click.Context, server: str, timeout: float) -> None:
    """Flotilla: a service-mesh-centric container orchestrator."""
    ctx.obj = {"server": server, "timeout": timeout}
    if not logging.getLogger().handlers:
        logging.basicConfig(format=_LOG_FORMAT)
    default_log_level(ctx, logging.WARNING)


#: What ``describe`` adds for a kind, registered by the command groups that
#: know it (``mesh``: the proxies an Intention affects).
DESCRIBE_MORE: dict[str, Callable[[Client, dict[str, Any]], None]] = {}


def client_of(ctx: click.Context) -> Client:
    obj = ctx.find_root().obj
    client = Client(obj["server"], timeout=obj["timeout"])
    ctx.call_on_close(client.close)
    return client


# --- manifests ---------------------------------------------------------------


def read_manifests(paths: Sequence[str], recursive: bool) -> list[tuple[Any, str]]:
    """Documents from files, folders (their .yaml/.yml/.json files) or ``-`` (stdin)."""
    docs: list[tuple[Any, str]] = []
    for path in paths:
        for source, text in _texts(path, recursive):
            docs += parse_yaml(text, source)
    if not docs:
        raise errors.InvalidManifest(
            [errors.FieldViolation("", f"no manifests found in {', '.join(paths)}")]
        )
    return docs


def _texts(path: str, recursive: bool) -> Iterator[tuple[str, bytes]]:
    """Each manifest file's bytes (decoded by the loader: invalid UTF-8 is
    a manifest error naming the line, not a crash)."""
    if path == "-":
        yield "<stdin>", sys.stdin.buffer.read()
        return
    target = Path(path)
    if target.is_dir():
        pattern = "**/*" if recursive else "*"
        for child in sorted(target.glob(pattern)):
            if child.is_file() and child.suffix in MANIFEST_SUFFIXES:
                yield str(child), child.read_bytes()
    elif target.is_file():
        yield str(target), target.read_bytes()
    else:
        raise errors.InvalidManifest(
            [errors.FieldViolation("", f"{path}: no such file or directory")]
        )


def checked(docs: list[tuple[Any, str]]) -> list[tuple[Any, str]]:
    """Validate locally first (same rules as the server) for fast, complete errors."""
    to_resources(docs)
    return docs


def kind_arg(name: str, *, system: bool = True) -> str:
    kind = resolve_kind(name, system=system)
    if kind is None:
        kinds = ", ".join(KINDS + (SYSTEM_KINDS if system else ()))
        raise click.BadParameter(f"unknown kind {name!r}; use one of {kinds}",
                                 param_hint="KIND")
    return kind


def namespace_of(kind: str, namespace: str) -> str:
    return NODE_NAMESPACE if kind == "Node" else namespace


def parse_selector(selector: str | None) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in filter(None, (selector or "").split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{part!r} is not key=value", param_hint="--selector")
        pairs[key.strip()] = value.strip()
    return pairs


OUTPUT = click.option("-o", "--output", type=click.Choice(["table", "json", "yaml", "name"]),
                      default="table", show_default=True, help="Output format.")
NAMESPACE = click.option("-n", "--namespace", default="default", show_default=True)
FILES = click.option("-f", "--filename", "files", multiple=True, metavar="PATH",
                     help="Manifest file, folder, or - for stdin (repeatable).")
RECURSIVE = click.option("-R", "--recursive", is_flag=True, help="Descend into sub-folders.")


def ref_line(doc: dict[str, Any]) -> str:
    meta = doc["metadata"]
    return f"{doc['kind']} {meta['namespace']}/{meta['name']}"


# --- commands ------------------------------------------------------------------


@cli.command()
@FILES
@RECURSIVE
@click.option("--dry-run", is_flag=True, help="Validate and report; store nothing.")
@click.option("--wait", is_flag=True,
              help="Return only when the change reached the mesh: the instances it makes "
              "serve, their proxies connected and ACKed, and every connected proxy ACKed.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds --wait waits before giving up.")
@OUTPUT
@click.pass_context
def apply(ctx: click.Context, files: tuple[str, ...], recursive: bool, dry_run: bool,
          wait: bool, wait_timeout: float, output: str) -> None:
    """Create or update resources from manifests, all or nothing."""
    if not files:
        raise click.UsageError("apply needs -f PATH (a file, a folder or -)")
    docs = checked(read_manifests(files, recursive))
    client = client_of(ctx)
    results = client.apply(docs, dry_run=dry_run)
    if output in ("json", "yaml"):
        _emit(output, [r.doc for r in results], single=False)
    else:
        suffix = " (dry run)" if dry_run else ""
        for result in results:
            out.print(f"{ref_line(result.doc)} {result.action}{suffix}")
    if wait and not dry_run:
        version = max(int(r.doc["metadata"].get("resourceVersion", 0)) for r in results)
        _wait_for_proxies(client, version, wait_timeout, [r.doc for r in results])


def _wait_for_proxies(client: Client, version: int, timeout: float,
                      docs: Sequence[dict[str, Any]]) -> None:
    """``apply --wait``: progress on stderr as it changes, the outcome on
    stdout, or an error naming what did not get there."""
    rollouts = [r for r in map(Rollout.of, docs) if r is not None]
    started = time.monotonic()
    shown = ""

    def progress(state: SyncState) -> None:
        """One line each time the counts move; which instance waits for what
        is told only if the wait fails."""
        nonlocal shown
        if not state.done and str(state) != shown:
            shown = str(state)
            err.print(f"waiting ({time.monotonic() - started:.0f}s): {shown}", markup=False)

    state = client.wait_synced(version, timeout, rollouts, progress=progress)
    took = time.monotonic() - started
    count = len(state.proxies)
    if state.done:
        for rollout in state.rollouts:
            out.print(str(rollout), markup=False)
        out.print(f"{count} prox{'y' if count == 1 else 'ies'} ACKed the change "
                  f"in {took:.1f}s", markup=False)
        return
    unready = [r for r in state.rollouts if not r.done]
    lines = [f"{r} within {took:.1f}s; waiting for:\n" + "\n".join(f"  {w}" for w in r.waiting)
             for r in unready]
    behind = state.nacked or state.behind
    if behind:
        lines.append(f"{len(behind)} of {count} proxies did not take the change "
                     f"(resourceVersion {state.version}) within {took:.1f}s:")
        lines += [f"  {p.id} ({p.kind} {p.namespace}/{p.service}): "
                  + (f"NACK: {p.last_nack_error}" if p.last_nack_error else "not ACKed yet")
                  for p in behind]
    see = "`flotilla get instances` and " if unready else ""
    raise errors.FailedPrecondition("\n".join(lines) + f"\nsee {see}`flotilla proxy-status`; "
                                    "the proxies keep their last good config")


@cli.command()
@click.argument("kind")
@click.argument("names", nargs=-1)
@NAMESPACE
@click.option("-A", "--all-namespaces", is_flag=True)
@click.option("-l", "--selector", help="Label selector: key=value[,key=value].")
@click.option("-w", "--watch", is_flag=True, help="After listing, stream changes.")
@OUTPUT
@click.pass_context
def get(ctx: click.Context, kind: str, names: tuple[str, ...], namespace: str,
        all_namespaces: bool, selector: str | None, watch: bool, output: str) -> None:
    """List resources of a KIND (or `all`), or show the named ones.
    For instances, NAMES are services: `get instances web` lists web's."""
    resolved = "" if kind.lower() == "all" else kind_arg(kind)
    client = client_of(ctx)
    ns = "" if all_namespaces or resolved == "Node" else namespace
    labels = parse_selector(selector)
    if resolved == "Instance" and names:
        docs = []
        for service in names:
            docs += client.list(resolved, ns, {**labels, SERVICE_LABEL: service})[0]
        version = max((d["metadata"]["resourceVersion"] for d in docs), default=0)
        names = ()
    elif names:
        if not resolved:
            raise click.BadParameter("name a kind to get objects by name", param_hint="KIND")
        docs = [client.get(resolved, name, namespace_of(resolved, namespace)) for name in names]
        version = max(d["metadata"]["resourceVersion"] for d in docs)
    else:
        docs, version = client.list(resolved, ns, labels)
        if not resolved:  # `all` is what users apply, as with kubectl
            docs = [d for d in docs if d["kind"] in KINDS]
    _emit(output, docs, single=len(names) == 1, namespaces=all_namespaces)
    if not docs and output == "table" and not watch:
        where = "any namespace" if all_namespaces else f"namespace {namespace}"
        err.print(f"No {resolved or 'resources'} found in {where}.")
    if watch:
        wanted = set(names)
        for event in client.watch(resolved, ns, version):
            if wanted and event.doc["metadata"]["name"] not in wanted:
                continue
            if output in ("json", "yaml"):
                _emit(output, [{"type": event.type, "object": event.doc}], single=True)
            else:
                out.print(f"{event.type:<9} {ref_line(event.doc)} "
                          f"(resourceVersion {event.resource_version})")


@cli.command()
@click.argument("kind")
@click.argument("name")
@NAMESPACE
@click.pass_context
def describe(ctx: click.Context, kind: str, name: str, namespace: str) -> None:
    """Show one resource in detail."""
    resolved = kind_arg(kind)
    client = client_of(ctx)
    doc = client.get(resolved, name, namespace_of(resolved, namespace))
    output.describe(doc, out)
    more = DESCRIBE_MORE.get(resolved)
    if more is not None:
        more(client, doc)


@cli.command()
@click.argument("kind", required=False)
@click.argument("names", nargs=-1)
@FILES
@RECURSIVE
@NAMESPACE
@click.option("--ignore-not-found", is_flag=True, help="Skip objects that do not exist.")
@click.option("--dry-run", is_flag=True, help="Check and report; delete nothing.")
@click.pass_context
def delete(ctx: click.Context, kind: str | None, names: tuple[str, ...],
           files: tuple[str, ...], recursive: bool, namespace: str, ignore_not_found: bool,
           dry_run: bool) -> None:
    """Delete KIND NAME... or what manifests (-f) describe, all or nothing."""
    if files and kind:
        raise click.UsageError("give either KIND NAME... or -f PATH, not both")
    if files:
        refs = [
            (r.kind, r.namespace, r.name)
            for r in to_resources(read_manifests(files, recursive))
        ]
    elif kind and names:
        resolved = kind_arg(kind)
        refs = [(resolved, namespace_of(resolved, namespace), name) for name in names]
    else:
        raise click.UsageError("delete needs KIND NAME... or -f PATH")
    deleted = client_of(ctx).delete(refs, ignore_not_found=ignore_not_found, dry_run=dry_run)
    suffix = " (dry run)" if dry_run else ""
    for doc in deleted:
        out.print(f"{ref_line(doc)} deleted{suffix}")


@cli.command()
@click.option("--listen", envvar="FLOTILLA_LISTEN", default=DEFAULT_SERVER, show_default=True,
              help="host:port for the gRPC API (env FLOTILLA_LISTEN).")
@click.option("--agent-listen", envvar="FLOTILLA_AGENT_LISTEN", default="",
              help="host:port where agents talk mutual TLS with their node certificates "
              "[default: the --listen host, next port].")
@click.option("--data-dir", envvar="FLOTILLA_DATA_DIR", type=click.Path(path_type=Path),
              default=None, help="Where the store lives (env FLOTILLA_DATA_DIR) "
              "[default: ~/.local/share/flotilla/server].")
@click.option("--durable", is_flag=True, help="fsync every commit (survives power loss).")
@click.option("--node-grace", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="Seconds without a report before a node is down and its instances move.")
@click.option("--trust-domain", default="flotilla.local", show_default=True,
              callback=lambda ctx, param, value: _trust_domain(value),
              help="The SPIFFE trust domain of the mesh's identities.")
@click.option("--cert-ttl", default="24h", show_default=True,
              callback=lambda ctx, param, value: _cert_ttl(value),
              help="How long a service certificate lives (at least 1m); rotated at half-life.")
@click.option("--mtls/--no-mtls", default=True, show_default=True,
              help="Mutual TLS between sidecars, with intentions enforced as RBAC.")
@click.option("--default-intention", type=click.Choice(["allow", "deny"]), default="allow",
              show_default=True, help="What a call no intention decides gets (with --mtls).")
@click.option("--catalog", envvar="FLOTILLA_CATALOG", default="", metavar="consul://HOST:PORT",
              callback=lambda ctx, param, value: _catalog(value),
              help="Publish every serving instance to this Consul agent (env FLOTILLA_CATALOG) "
              "[default: the embedded catalog only].")
@click.option("--store", "store_url", envvar="FLOTILLA_STORE", default="",
              metavar="consul://HOST:PORT[/PREFIX]",
              callback=lambda ctx, param, value: _store(value),
              help="Replicate the store on Consul KV so that several servers share it (HA): "
              "one leads, every one serves [default: this server's data dir alone].")
@click.option("--store-token", envvar="FLOTILLA_STORE_TOKEN", default="",
              help="The Consul ACL token for --store (env FLOTILLA_STORE_TOKEN).")
@click.option("--catalog-token", envvar="CONSUL_HTTP_TOKEN", default="", show_default=False,
              help="The Consul ACL token for --catalog (env CONSUL_HTTP_TOKEN).")
@click.option("--max-replicas", type=click.IntRange(min=1, max=HARD_MAX_REPLICAS),
              default=DEFAULT_MAX_REPLICAS, show_default=True,
              help="The most replicas one Service or Gateway may ask for.")
def server(listen: str, agent_listen: str, data_dir: Path | None, durable: bool,
           node_grace: float, trust_domain: str, cert_ttl: float, mtls: bool,
           default_intention: str, store_url: str, store_token: str, catalog: str,
           catalog_token: str, max_replicas: int) -> None:
    """Run the control plane."""
    from controlplane.server.app import ServerConfig, run

    default_log_level(click.get_current_context(), logging.INFO)
    run(ServerConfig(data_dir=data_dir or default_data_dir("server"), listen=listen,
                     agent_listen=agent_listen, durable=durable, node_grace=node_grace,
                     trust_domain=trust_domain, cert_ttl=cert_ttl, mtls=mtls,
                     default_intention=default_intention, catalog=catalog,
                     catalog_token=catalog_token, store=store_url, store_token=store_token,
                     max_replicas=max_replicas))


def _trust_domain(value: str) -> str:
    labels = value.split(".")
    if not value or len(value) > 253 or not all(
            label and label.replace("-", "").isalnum() and label.islower() for label in labels):
        raise click.BadParameter(f"{value!r} is not a trust domain: use a lowercase DNS name "
                                 "such as flotilla.local or mesh.example.com")
    return value


def _catalog(value: str) -> str:
    if not value:
        return value
    from controlplane.catalog.consul import parse_url
    from controlplane.errors import UserError

    try:
        parse_url(value)
    except UserError as error:
        raise click.BadParameter(str(error)) from None
    return value


def _store(value: str) -> str:
    if value:
        from controlplane.errors import UserError
        from controlplane.store.consul import parse_store_url

        try:
            parse_store_url(value)
        except UserError as error:
            raise click.BadParameter(str(error)) from None
    return value


def _cert_ttl(value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    if seconds < 60:
        raise click.BadParameter(f"{value} is shorter than the 1m minimum")
    return seconds


@cli.command()
@click.option("--listen", default=DEFAULT_SERVER, show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="[default: ~/.local/share/flotilla/dev]")
@click.option("--address", default=None,
              help="Where the local agent publishes instances [default: the docker bridge's "
              "gateway when Docker runs them, else 127.0.0.1].")
@click.option("--driver", "drivers", multiple=True, type=click.Choice(["docker", "process"]),
              help="Drivers the local agent offers [default: process, and docker when an "
              "engine answers].")
def dev(listen: str, data_dir: Path | None, address: str | None,
        drivers: tuple[str, ...]) -> None:
    """Everything on one machine with the embedded defaults (SQLite store,
    built-in catalog, one agent): the way to try Flotilla."""
    from controlplane.server.app import ServerConfig, run
    from sidecar.main import build_agent, local_address

    data = data_dir or default_data_dir("dev")
    address = address or local_address(drivers)

    def start_agent(server: str) -> Callable[[], None]:
        agent = build_agent(server=server, name="dev", address=address, labels={}, cpu=None,
                            memory=None, drivers=drivers, data_dir=data / "agent",
                            join_token=(data / "join-token").read_text().strip())
        agent.start()
        out.print(f"flotilla dev: control plane on {server}, store {data / 'flotilla.db'} "
                  f"(SQLite), catalog: embedded, agent 'dev' on {address} with drivers "
                  f"{', '.join(sorted(agent.drivers))}")
        out.print("  try: flotilla apply -f deploy/examples/   then   flotilla get instances")
        return lambda: agent.stop(stop_workloads=True)

    run(ServerConfig(data_dir=data, listen=listen), announce=False, alongside=start_agent)


def _emit(fmt: str, docs: list[dict[str, Any]], *, single: bool, namespaces: bool = False
          ) -> None:
    if fmt == "table":
        if docs:
            output.table(docs, out, namespaces=namespaces)
        return
    if fmt == "name":
        for doc in docs:
            out.print(f"{doc['kind'].lower()}/{doc['metadata']['name']}")
        return
    value: Any = docs[0] if single and docs else output.listing(docs)
    text = output.as_json(value) if fmt == "json" else output.as_yaml(value)
    out.print(text, markup=False, end="" if text.endswith("\n") else "\n")

"""Commands about running things: the agent, scaling, draining."""

from __future__ import annotations

import logging
import queue
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import click

from controlplane import errors
from controlplane.cli.main import (
    cli,
    client_of,
    default_data_dir,
    default_log_level,
    out,
    parse_selector,
)
from controlplane.model import SERVICE_LABEL


@cli.command()
@click.argument("service")
@click.argument("replicas", type=click.IntRange(min=0))
@click.option("-n", "--namespace", default="default", show_default=True)
@click.pass_context
def scale(ctx: click.Context, service: str, replicas: int, namespace: str) -> None:
    """Set SERVICE's replicas."""
    applied = client_of(ctx).scale(service, replicas, namespace)
    out.print(f"Service {namespace}/{service} scaled to {replicas} ({applied.action})")


@cli.command()
@click.argument("service")
@click.argument("instance", required=False)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new output.")
@click.option("--tail", type=click.IntRange(min=0), default=0, help="Only the last N lines.")
@click.pass_context
def logs(ctx: click.Context, service: str, instance: str | None, namespace: str, follow: bool,
         tail: int) -> None:
    """Print the output of SERVICE's instances (or of one INSTANCE)."""
    client = client_of(ctx)
    found = client.list("Instance", namespace, {SERVICE_LABEL: service})[0]
    if instance:
        found = [i for i in found if i["metadata"]["name"] == instance]
    if not found:
        what = f"instance {instance} of " if instance else "instances of "
        raise errors.NotFound(f"no {what}Service {namespace}/{service}")
    prefix = len(found) > 1
    lines: queue.Queue[str | None] = queue.Queue()

    def pump(doc: dict[str, Any]) -> None:
        name = doc["metadata"]["name"]
        try:
            for data in client.logs(doc, tail, follow):
                for line in data.decode(errors="replace").splitlines():
                    lines.put(f"[{name}] {line}" if prefix else line)
        except errors.FlotillaError as error:
            lines.put(f"[{name}] ({error})")
        finally:
            lines.put(None)

    for doc in found:
        threading.Thread(target=pump, args=(doc,), daemon=True).start()
    remaining = len(found)
    while remaining:
        line = lines.get()
        if line is None:
            remaining -= 1
        else:
            out.print(line, markup=False)


@cli.command()
@click.argument("node")
@click.pass_context
def drain(ctx: click.Context, node: str) -> None:
    """Move every instance off NODE and place nothing new on it."""
    client_of(ctx).drain(node)
    out.print(f"Node {node} draining: its instances move to other nodes")


@cli.command()
@click.argument("node")
@click.option("--undo", is_flag=True,
              help="Let NODE join again with the join token (certificates issued before the "
              "revocation stay refused).")
@click.pass_context
def revoke(ctx: click.Context, node: str, undo: bool) -> None:
    """Refuse NODE's agent from now on (its certificate and joins under its
    name); its instances move to other nodes."""
    client_of(ctx).revoke(node, undo)
    if undo:
        out.print(f"Node {node} may join again")
    else:
        out.print(f"Node {node} revoked: its agent is refused and its instances move to "
                  "other nodes")


@cli.command()
@click.option("--name", required=True, help="This node's name (a DNS label).")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="The address instances are published on and reachable at.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Node label for placement constraints (repeatable).")
@click.option("--cpu", type=click.IntRange(min=1), default=None,
              help="CPU capacity in millicores [default: detected].")
@click.option("--memory", type=click.IntRange(min=1), default=None,
              help="Memory capacity in MiB [default: detected].")
@click.option("--driver", "drivers", multiple=True, type=click.Choice(["docker", "process"]),
              help="Drivers to offer [default: process, and docker when an engine answers].")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="[default: ~/.local/share/flotilla/agent-NAME]")
@click.option("--sidecars/--no-sidecars", default=True, show_default=True,
              help="Run every instance with its Envoy sidecar (the mesh).")
@click.option("--join-token", envvar="FLOTILLA_JOIN_TOKEN", default=None,
              help="The cluster's join token (env FLOTILLA_JOIN_TOKEN); the server keeps it in "
              "its data dir's join-token file.")
@click.option("--join-token-file", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="Read the join token from this file.")
@click.pass_context
def agent(ctx: click.Context, name: str, address: str, labels: tuple[str, ...],
          cpu: int | None, memory: int | None, drivers: tuple[str, ...],
          data_dir: Path | None, sidecars: bool, join_token: str | None,
          join_token_file: Path | None) -> None:
    """Run the node agent: join the control plane and run what it assigns."""
    from sidecar.main import build_agent

    if join_token_file is not None:
        try:
            join_token = join_token_file.read_text().strip()
        except OSError as error:
            raise click.BadParameter(f"cannot read {join_token_file}: {error.strerror}",
                                     param_hint="--join-token-file") from None
    if not join_token:
        raise click.UsageError("the agent needs the cluster's join token: --join-token TOKEN "
                               "or --join-token-file PATH (the server writes it to the "
                               "join-token file in its data dir)")
    default_log_level(ctx, logging.INFO)
    node = build_agent(
        server=ctx.find_root().obj["server"], name=name, address=address,
        labels=parse_selector(",".join(labels)), cpu=cpu, memory=memory, drivers=drivers,
        data_dir=data_dir or default_data_dir(f"agent-{name}"), sidecars=sidecars,
        join_token=join_token,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    node.start()
    out.print(f"flotilla agent {name} ({address}, drivers {', '.join(sorted(node.drivers))}) "
              f"joining {node.config.server}")
    while not stop.wait(0.5) and not node.failure:
        pass
    node.stop()
    if node.failure:
        raise errors.Unauthenticated(node.failure)

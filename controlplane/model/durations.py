"""Durations as manifests write them (``250ms``, ``5s``, ``1.5m``, ``2h``):
the schemas validate them, and the agent and the xDS builder read them. Pure."""

from __future__ import annotations

import re

from google.protobuf import duration_pb2

DURATION = re.compile(r"^(\d+(\.\d+)?)(ms|s|m|h)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float:
    """Seconds in a duration string such as ``250ms``, ``5s``, ``1.5m`` or ``2h``."""
    match = DURATION.match(value)
    if not match:
        raise ValueError(
            f"{value!r} is not a duration: use a number and a unit "
            "(ms, s, m or h), like '250ms', '5s' or '1m'"
        )
    return float(match.group(1)) * _DURATION_UNITS[match.group(3)]


def duration_message(value: str) -> duration_pb2.Duration:
    """A duration string as protobuf's ``Duration`` (Envoy's and the agent's)."""
    out = duration_pb2.Duration()
    out.FromNanoseconds(round(parse_duration(value) * 1e9))
    return out

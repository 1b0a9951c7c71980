"""Field types shared by the spec schemas: names, labels, durations, ports.

Every check raises ``ValueError`` with a message that says what to change;
:mod:`controlplane.manifests.validate` turns it into a field violation.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

from controlplane.model.durations import parse_duration as parse_duration

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SERVER_NAME = re.compile(
    r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$")
_CONSUL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def suggest_dns_label(value: str) -> str:
    """The nearest valid DNS-1123 label, for error messages."""
    fixed = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")[:63].strip("-")
    return fixed or "my-name"


def check_dns_label(value: str) -> str:
    if len(value) > 63 or not DNS_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use at most 63 lowercase letters, digits "
            f"and '-', starting and ending with a letter or digit, e.g. "
            f"{suggest_dns_label(value)!r}"
        )
    return value


def check_label_key(key: str, what: str = "label") -> str:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        raise ValueError(
            f"{what} key {key!r}: the prefix before '/' must be a DNS subdomain "
            "like 'example.com'"
        )
    if not name or len(name) > 63 or not LABEL_NAME.match(name):
        raise ValueError(
            f"{what} key {key!r} is not valid: use at most 63 letters, digits, "
            "'-', '_' or '.', starting and ending with a letter or digit "
            "(optionally prefixed by a DNS subdomain and '/')"
        )
    return key


def check_label_value(value: str) -> str:
    if value and (len(value) > 63 or not LABEL_NAME.match(value)):
        raise ValueError(
            f"label value {value!r} is not valid: use at most 63 letters, digits, "
            "'-', '_' or '.', starting and ending with a letter or digit"
        )
    return value


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        check_label_key(key)
        check_label_value(value)
    return labels


#: The longest duration a manifest may give (30 days): a timeout or an
#: interval beyond it is a typo, and Envoy's own bound is far below a float's.
MAX_DURATION_SECONDS = 30 * 24 * 3600.0
#: The most bytes a resource's annotations (keys and values) may hold, as in Kubernetes.
MAX_ANNOTATION_BYTES = 256 * 1024


def check_duration(value: str) -> str:
    if parse_duration(value) > MAX_DURATION_SECONDS:
        raise ValueError(f"{value!r} is longer than 30 days (720h); use a shorter duration")
    return value


def check_annotations(annotations: dict[str, str]) -> dict[str, str]:
    for key in annotations:
        check_label_key(key, "annotation")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if size > MAX_ANNOTATION_BYTES:
        raise ValueError(f"annotations hold {size:,} bytes, more than {MAX_ANNOTATION_BYTES:,}; "
                         "keep large data in a ConfigMap")
    return annotations


def check_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path: start it with '/', e.g. '/{value}'")
    return value


def strict_int(value: Any) -> Any:
    """Integers only: no booleans, no strings, no fractions.

    Whole floats (``3.0``) are accepted because JSON and protobuf's Struct
    carry every number as a double.
    """
    if isinstance(value, bool):
        raise ValueError(f"must be an integer, got boolean {str(value).lower()}")
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError(f"must be a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        raise ValueError(f"must be an integer, got string {value!r}; write it without quotes")
    raise ValueError(f"must be an integer, got {type(value).__name__}")


Int = Annotated[int, BeforeValidator(strict_int)]
NonNegativeInt = Annotated[int, BeforeValidator(strict_int), Field(ge=0)]
PositiveInt = Annotated[int, BeforeValidator(strict_int), Field(ge=1)]
Port = Annotated[int, BeforeValidator(strict_int), Field(ge=1, le=65535)]
#: The most replicas any server allows one Service or Gateway (a server's
#: own bound, ``--max-replicas``, is lower: :mod:`controlplane.model.limits`).
HARD_MAX_REPLICAS = 100_000
Replicas = Annotated[int, BeforeValidator(strict_int), Field(ge=0, le=HARD_MAX_REPLICAS)]
Percent = Annotated[int, BeforeValidator(strict_int), Field(ge=0, le=100)]
Name = Annotated[str, AfterValidator(check_dns_label)]
Labels = Annotated[dict[str, str], AfterValidator(check_labels)]
Annotations = Annotated[dict[str, str], AfterValidator(check_annotations)]
Duration = Annotated[str, AfterValidator(check_duration)]
AbsPath = Annotated[str, AfterValidator(check_path)]


class FieldError(ValueError):
    """A rule on a model that blames one of its fields (a camelCase path
    relative to the model, like ``replicas`` or ``listeners[1].port``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def is_server_name(value: str) -> bool:
    """Is ``value`` a DNS name a TLS client may send as SNI?"""
    return len(value) <= 253 and bool(_SERVER_NAME.match(value))


def is_consul_name(value: str) -> bool:
    """Is ``value`` a Consul service name Flotilla can follow?"""
    return len(value) <= 253 and bool(_CONSUL_NAME.match(value))

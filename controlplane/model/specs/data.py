"""The ConfigMap and Secret specs: data mounted as files or taken as env."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from controlplane.model.specs.common import NOT_SUPPORTED_VALUES, Schema
from controlplane.model.types import DATA_KEY


MAX_DATA_BYTES = 1024 * 1024
#: What the API shows of every Secret value; applied back (``get -o yaml``
#: edited and reapplied), it keeps the value stored for that key.
REDACTED = "<redacted>"


def _check_keys(data: dict[str, str]) -> dict[str, str]:
    for key in data:
        if len(key) > 253 or not DATA_KEY.match(key):
            raise ValueError(
                f"key {key!r} is not valid: use letters, digits, '-', '_' or '.' "
                "(it becomes a file name)"
            )
    size = sum(len(k) + len(v.encode()) for k, v in data.items())
    if size > MAX_DATA_BYTES:
        raise ValueError(f"data is {size} bytes; keep it under {MAX_DATA_BYTES} (1 MiB)")
    return data


DataMap = Annotated[dict[str, str], AfterValidator(_check_keys)]


class ConfigMapSpec(Schema):
    data: DataMap = {}


class SecretSpec(Schema):
    #: tls: for TLS at the gateway (needs tls.crt and tls.key), which comes later.
    type: Literal["opaque", "tls"] = Field(default="opaque", json_schema_extra={
        NOT_SUPPORTED_VALUES: {"tls": "Secrets of type tls are not supported yet: they come "
                               "with TLS at the gateway, which is not supported yet either, and "
                               "nothing else reads the type; use type opaque (tls.crt and "
                               "tls.key then mount as files like any other keys)"}})
    #: Values base64-encoded; ``<redacted>`` keeps the stored value.
    data: DataMap = {}
    #: Values as plain text; merged into data when stored.
    string_data: DataMap | None = None

    @model_validator(mode="after")
    def _decode(self) -> SecretSpec:
        for key, value in self.data.items():
            if value == REDACTED:
                continue  # the stored value, filled in by the server on apply
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(
                    f"data[{key!r}] is not valid base64; encode it, or put the plain "
                    "text under stringData"
                ) from None
        plain = self.string_data or {}
        both = sorted(set(self.data) & set(plain))
        if both:
            raise ValueError(f"key {both[0]!r} is in both data and stringData; keep one")
        keys = set(self.data) | set(plain)
        if self.type == "tls" and not {"tls.crt", "tls.key"} <= keys:
            raise ValueError("a Secret of type tls needs the keys tls.crt and tls.key")
        return self

    def normalized(self) -> SecretSpec:
        merged = dict(self.data)
        for key, value in (self.string_data or {}).items():
            merged[key] = base64.b64encode(value.encode()).decode()
        return self.model_copy(update={"data": dict(sorted(merged.items())), "string_data": None})

"""Secrets out of config dumps: every secret-bearing field of the config protos is in one table
(`SECRET_FIELDS`), applied to a copy of the snapshot before /config_dump renders it, and by control to
every resource its Get returns (`restore` puts the stored values back when such a read-back is applied).

The @connections id key and the API-key hash key are redacted whole, as are the ApiKey hashes. Stage
variables (and their canary overrides) are redacted when the stage declares them secret
(`spec.secretVariables`: the declaration decides), and, as a safety net, when their names look secret.
The cache encryption key never enters a snapshot (the sidecar reads it from a file or its
environment). Literal request-parameter values sent to headers or query parameters whose names look
secret, credentials in URLs, and secret-looking annotations are redacted too.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

REDACTED = "[redacted]"

# Names that say "this value is a secret" (stage variables, annotations, headers, query parameters).
SECRET_NAME = re.compile(r"key|secret|token|passw|credential|authorization|cookie|session|signature", re.I)

# (message, field) -> rule:
#   value    the whole value
#   declared map entries the enclosing StageSpec declares secret, or whose key looks secret
#   names    map entries whose key looks secret
#   literal  map entries whose key looks secret and whose value is a 'literal' (not a reference)
#   url      the password in user:password@ and query parameters whose names look secret
#   meta     like names, plus kubectl's last-applied-configuration (a copy of the whole document)
SECRET_FIELDS: dict[tuple[str, str], str] = {
    ("meshgate.v1.ApiKeySpec", "value_sha256"): "value",
    ("meshgate.v1.ApiKeySpec", "value_hmac"): "value",
    ("meshgate.v1.Snapshot", "connection_id_key"): "value",
    ("meshgate.v1.Snapshot", "api_key_hash_key"): "value",
    ("meshgate.v1.StageSpec", "variables"): "declared",
    ("meshgate.v1.CanarySettings", "variables"): "declared",
    ("meshgate.v1.Integration", "request_parameters"): "literal",
    ("meshgate.v1.Integration", "uri"): "url",
    ("meshgate.v1.Authorizer", "uri"): "url",
    ("meshgate.v1.Authorizer", "jwks_uri"): "url",
    ("meshgate.v1.ObjectMeta", "annotations"): "meta",
}

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def redact_url(url: str) -> str:
    if "@" not in url and "?" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", f":{REDACTED}@", 1)
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(SECRET_NAME.search(k) for k, _ in pairs):
            query = urlencode([(k, REDACTED if SECRET_NAME.search(k) else v) for k, v in pairs], safe="[]${}")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secret_entry(k: str, v: str, rule: str, declared: frozenset[str]) -> bool:
    if rule == "declared" and k in declared:
        return True
    secret = bool(SECRET_NAME.search(k.rpartition(".")[2] if rule == "literal" else k))
    if rule == "literal":
        return secret and v.startswith("'")
    if rule == "meta":
        return secret or k == LAST_APPLIED
    return secret


def _redact_map(m: MutableMapping[str, str], rule: str, declared: frozenset[str]) -> None:
    for k in list(m):
        if _secret_entry(k, m[k], rule, declared):
            m[k] = REDACTED


def _declared(msg: Message, declared: frozenset[str]) -> frozenset[str]:
    if msg.DESCRIPTOR.full_name == "meshgate.v1.StageSpec":
        spec: Any = msg
        return frozenset(spec.secret_variables)
    return declared


def redact(msg: Message, declared: frozenset[str] = frozenset()) -> None:
    """Redact `msg` in place (give it a copy)."""
    name = msg.DESCRIPTOR.full_name
    declared = _declared(msg, declared)
    for fd, value in msg.ListFields():
        rule = SECRET_FIELDS.get((name, fd.name))
        if rule == "value":
            setattr(msg, fd.name, REDACTED.encode() if isinstance(value, bytes) else REDACTED)
        elif rule == "url":
            setattr(msg, fd.name, redact_url(value))
        elif rule is not None:
            _redact_map(value, rule, declared)
        for item in _submessages(fd, value):
            redact(item, declared)


def _submessages(fd: FieldDescriptor, value: Any) -> list[Message]:
    if fd.message_type is None:
        return []
    if fd.message_type.GetOptions().map_entry:
        if fd.message_type.fields_by_name["value"].message_type is None:
            return []
        return list(value.values())
    if fd.is_repeated:
        return list(value)
    return [value]


def restore(new: Message, old: Message | None, path: str = "") -> None:
    """Where `new` (an applied document) holds the redaction marker in a secret field, put back the
    stored value from `old`, as kubectl users expect of write-only fields. Raises ValueError naming
    the field when there is no stored value for a marker to stand for."""
    name = new.DESCRIPTOR.full_name
    for fd, value in new.ListFields():
        where = f"{path}.{fd.json_name}" if path else fd.json_name
        rule = SECRET_FIELDS.get((name, fd.name))
        was: Any = getattr(old, fd.name) if old is not None else None
        if rule == "value" and value in (REDACTED, REDACTED.encode()):
            if not was:
                raise ValueError(f"{where}: {REDACTED} stands for the stored value, and there is none")
            setattr(new, fd.name, was)
        elif rule == "url" and REDACTED in value:
            if not was or redact_url(was) != value:
                raise ValueError(
                    f"{where}: holds {REDACTED} but is not the stored value redacted; give it whole"
                )
            setattr(new, fd.name, was)
        elif rule in ("declared", "names", "literal", "meta"):
            for k, v in list(value.items()):  # a copy: a protobuf map written while iterated skips keys
                if v == REDACTED:
                    if was is None or k not in was:
                        raise ValueError(
                            f"{where}.{k}: {REDACTED} stands for the stored value, and there is none"
                        )
                    value[k] = was[k]
        _restore_children(fd, value, was, where)


def _restore_children(fd: FieldDescriptor, value: Any, was: Any, where: str) -> None:
    if fd.message_type is None:
        return
    if fd.message_type.GetOptions().map_entry:
        if fd.message_type.fields_by_name["value"].message_type is not None:
            for k, item in value.items():
                restore(item, was[k] if was is not None and k in was else None, f"{where}.{k}")
    elif fd.is_repeated:
        olds = {_identity(m, i): m for i, m in enumerate(was or ())}
        for i, item in enumerate(value):
            restore(item, olds.get(_identity(item, i)), f"{where}[{i}]")
    else:
        restore(value, was if was is not None and was.ByteSize() else None, where)


def _identity(msg: Any, index: int) -> object:
    """Which stored element an applied one is: routes by method and path, others by name or position."""
    fields = msg.DESCRIPTOR.fields_by_name
    if "method" in fields and "path" in fields:
        return (msg.method.upper(), msg.path)
    if "name" in fields and msg.name:
        return msg.name
    return index

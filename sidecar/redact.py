"""Secrets out of config dumps: every secret-bearing field of the config protos is in one table
(`SECRET_FIELDS`), applied to a copy of the snapshot before /config_dump renders it.

The @connections id key (`Snapshot.connection_id_key`) is redacted whole. The cache encryption
key never enters a snapshot (the sidecar reads it from a file or its
environment), and an ApiKey carries only its sha256; that hash is still redacted, as are stage
variables whose names look secret, literal request-parameter values sent to headers or query
parameters whose names look secret, credentials in URLs, and secret-looking annotations.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from google.protobuf.message import Message

REDACTED = "[redacted]"

# Names that say "this value is a secret" (stage variables, annotations, headers, query parameters).
SECRET_NAME = re.compile(r"key|secret|token|passw|credential|authorization|cookie|session|signature", re.I)

# (message, field) -> rule:
#   value    the whole value
#   names    map entries whose key looks secret
#   literal  map entries whose key looks secret and whose value is a 'literal' (not a reference)
#   url      the password in user:password@ and query parameters whose names look secret
#   meta     like names, plus kubectl's last-applied-configuration (a copy of the whole document)
SECRET_FIELDS: dict[tuple[str, str], str] = {
    ("meshgate.v1.ApiKeySpec", "value_sha256"): "value",
    ("meshgate.v1.Snapshot", "connection_id_key"): "value",
    ("meshgate.v1.Snapshot", "api_key_hash_key"): "value",
    ("meshgate.v1.StageSpec", "variables"): "names",
    ("meshgate.v1.CanarySettings", "variables"): "names",
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


def _redact_map(m: MutableMapping[str, str], rule: str) -> None:
    for k in list(m):
        v = m[k]
        secret = bool(SECRET_NAME.search(k.rpartition(".")[2] if rule == "literal" else k))
        if rule == "literal":
            secret = secret and v.startswith("'")
        elif rule == "meta":
            secret = secret or k == LAST_APPLIED
        if secret:
            m[k] = REDACTED


def redact(msg: Message) -> None:
    """Redact `msg` in place (give it a copy)."""
    name = msg.DESCRIPTOR.full_name
    for fd, value in msg.ListFields():
        rule = SECRET_FIELDS.get((name, fd.name))
        if rule == "value":
            setattr(msg, fd.name, REDACTED.encode() if isinstance(value, bytes) else REDACTED)
        elif rule == "url":
            setattr(msg, fd.name, redact_url(value))
        elif rule is not None:
            _redact_map(value, rule)
        if fd.message_type is None:
            continue
        if fd.message_type.GetOptions().map_entry:
            if fd.message_type.fields_by_name["value"].message_type is not None:
                for item in value.values():
                    redact(item)
        elif fd.is_repeated:
            for item in value:
                redact(item)
        else:
            redact(value)

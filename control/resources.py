"""Reading and writing user documents: YAML/JSON (camelCase, Kubernetes-style) <-> Resource protos.

The same documents go to `meshgate apply -f` and, later, `kubectl apply`.
Errors name the file, the document and the field path, one a line; a document
set reports every error at once (every unknown or mistyped field of every document).
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from meshgate.control.errors import FieldError, InvalidConfig
from meshgate.control.state import KINDS, unwrap
from meshgate.sidecar.redact import REDACTED, redact, restore
from meshgate.v1 import resources_pb2

API_VERSION = "meshgate.io/v1"
USER_KINDS = ("Api", "Stage", "UsagePlan", "ApiKey")

_SCALAR_TYPES: dict[int, tuple[type, ...]] = {
    FieldDescriptor.TYPE_STRING: (str,),
    FieldDescriptor.TYPE_BOOL: (bool,),
    FieldDescriptor.TYPE_DOUBLE: (int, float),
    FieldDescriptor.TYPE_FLOAT: (int, float),
}
_INT_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
}


def _type_name(value: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


class DocumentInvalid(ValueError):
    """Every problem of one document, each a FieldError naming the field."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def _check(desc: Descriptor, value: object, path: str, found: list[FieldError]) -> None:
    """Walk a document against a message descriptor; every bad field goes to `found`."""
    if not isinstance(value, dict):
        found.append(FieldError(path or ".", f"expected an object, got {_type_name(value)}"))
        return
    by_name: dict[str, FieldDescriptor] = {}
    for f in desc.fields:
        by_name[f.json_name] = f
        by_name[f.name] = f
    for key, item in value.items():
        where = f"{path}.{key}" if path else str(key)
        field = by_name.get(str(key))
        if field is None:
            close = difflib.get_close_matches(str(key), [f.json_name for f in desc.fields], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            found.append(FieldError(where, f"unknown field{hint}"))
            continue
        if item is None:
            continue
        _check_field(field, item, where, found)


def _check_field(field: FieldDescriptor, item: object, where: str, found: list[FieldError]) -> None:
    mt = field.message_type
    if mt is not None and mt.GetOptions().map_entry:
        if not isinstance(item, dict):
            found.append(FieldError(where, f"expected a map, got {_type_name(item)}"))
            return
        vfield = mt.fields_by_name["value"]
        for k, v in item.items():
            _check_field(vfield, v, f"{where}.{k}", found)
        return
    if field.is_repeated:
        if not isinstance(item, list):
            found.append(FieldError(where, f"expected a list, got {_type_name(item)}"))
            return
        for i, element in enumerate(item):
            _check_single(field, element, f"{where}[{i}]", found)
        return
    _check_single(field, item, where, found)


def _check_single(field: FieldDescriptor, item: object, where: str, found: list[FieldError]) -> None:
    if field.message_type is not None:
        _check(field.message_type, item, where, found)
        return
    problem = _scalar_problem(field, item)
    if problem:
        found.append(FieldError(where, problem))


def _scalar_problem(field: FieldDescriptor, item: object) -> str:
    if field.type in _INT_TYPES:
        if isinstance(item, bool) or not isinstance(item, int | str):
            return f"expected an integer, got {_type_name(item)}"
        if isinstance(item, str) and not item.lstrip("-").isdigit():
            return f"expected an integer, got {item!r}"
        if field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64) and int(item) < 0:
            return "must not be negative"
        return ""
    expected = _SCALAR_TYPES.get(field.type)
    if expected and (not isinstance(item, expected) or (bool not in expected and isinstance(item, bool))):
        want = {str: "a string", bool: "true or false", int: "a number"}[expected[0]]
        return f"expected {want}, got {_type_name(item)}"
    return ""


def _hash_api_key(spec: dict[str, Any]) -> None:
    """spec.value -> spec.valueSha256 (the key never leaves the client; control stores a keyed hash
    of this, spec.valueHmac). A read-back's valueHmac "[redacted]" keeps the stored key."""
    if "valueFrom" in spec:
        raise ValueError(
            "spec.valueFrom: a Secret reference is read by the Kubernetes controller; "
            "`meshgate apply` takes the key as spec.value"
        )
    value = spec.pop("value", None)
    kept = spec.get("valueHmac", spec.get("value_hmac"))
    if kept is not None and kept != REDACTED:
        raise ValueError(
            f"spec.valueHmac: computed by control from spec.value; only {REDACTED!r} (keep the stored key)"
        )
    if value is not None:
        if not isinstance(value, str) or len(value) < 20:
            raise ValueError("spec.value: an API key must be a string of at least 20 characters")
        spec.pop("valueHmac", None)
        spec.pop("value_hmac", None)
        spec["valueSha256"] = hashlib.sha256(value.encode()).hexdigest()
    if not spec.get("valueSha256") and not spec.get("value_sha256") and kept is None:
        raise ValueError("spec.value: required (the key itself; only a keyed hash of it is stored)")


def parse_document(doc: object, default_namespace: str = "default") -> resources_pb2.Resource:
    """One decoded YAML/JSON document -> Resource. Raises ValueError naming the field."""
    if not isinstance(doc, dict):
        raise ValueError(f"expected a mapping with apiVersion, kind, metadata, spec; got {_type_name(doc)}")
    doc = dict(doc)
    version = doc.get("apiVersion")
    if version != API_VERSION:
        raise ValueError(f"apiVersion: must be {API_VERSION!r}, got {version!r}")
    kind = doc.get("kind")
    if kind == "Deployment":
        raise ValueError("kind: Deployment documents are made by `meshgate deploy`, not applied")
    if kind not in USER_KINDS:
        raise ValueError(f"kind: must be one of {', '.join(USER_KINDS)}, got {kind!r}")
    _, cls, oneof = KINDS[str(kind)]
    spec = doc.get("spec")
    if spec is None:
        raise ValueError("spec: required")
    if not isinstance(spec, dict):
        raise ValueError(f"spec: expected an object, got {_type_name(spec)}")
    if kind == "ApiKey":
        spec = dict(spec)
        _hash_api_key(spec)
        spec.setdefault("enabled", True)  # like API Gateway: a new key is enabled
        doc["spec"] = spec
    msg = cls()
    found: list[FieldError] = []
    _check(cast(Descriptor, msg.DESCRIPTOR), doc, "", found)
    meta = doc.get("metadata")
    if meta is None or (isinstance(meta, dict) and not meta.get("name")):
        found.append(FieldError("metadata.name", "required"))
    if found:
        raise DocumentInvalid(found)
    try:
        json_format.ParseDict(doc, msg)
    except json_format.ParseError as exc:
        raise ValueError(str(exc).splitlines()[0]) from None
    if not msg.metadata.namespace:
        msg.metadata.namespace = default_namespace
    res = resources_pb2.Resource()
    getattr(res, oneof).CopyFrom(msg)
    return res


def _describe(doc: object, namespace: str) -> str:
    if isinstance(doc, dict):
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        assert isinstance(meta, dict)
        name = meta.get("name", "?")
        ns = meta.get("namespace", namespace)
        return f"{doc.get('kind', '?')} {ns}/{name}"
    return ""


@dataclass
class Document:
    """One document of a set: where it came from, and its Resource or every problem it has."""

    origin: str  # the file ("" for text, e.g. stdin)
    number: int  # 1-based position in its file; 0 = the file as a whole (it is not YAML)
    subject: str  # "Api default/pets" ("? default/?" when the document does not say)
    resource: resources_pb2.Resource | None = None
    errors: list[FieldError] = field(default_factory=list)

    @property
    def where(self) -> str:
        """`pets.yaml document 2 (Api default/pets)`: where each error about this document is."""
        place = " ".join(p for p in (self.origin, f"document {self.number}" if self.number else "") if p)
        return f"{place} ({self.subject})" if self.subject else place


def _read_text(text: str, origin: str, namespace: str) -> list[Document]:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else "YAML"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return [Document(origin, 0, "", errors=[FieldError("", f"{where}: invalid YAML: {problem}")])]
    out = []
    for i, doc in enumerate(docs, start=1):
        one = Document(origin, i, _describe(doc, namespace))
        try:
            one.resource = parse_document(doc, namespace)
        except DocumentInvalid as exc:
            one.errors = exc.errors
        except ValueError as exc:
            one.errors = [FieldError("", str(exc))]
        out.append(one)
    return out


def read_documents(source: str | Path, namespace: str = "default") -> list[Document]:
    """Every document of YAML/JSON text, a file, or a directory of *.yaml/*.yml/*.json files, each
    with its Resource or its problems (`load_documents` raises them all).

    `namespace` applies to documents whose metadata names none.
    """
    if isinstance(source, str) and "\n" not in source and len(source) < 4096:
        try:
            if Path(source).exists():
                source = Path(source)
        except OSError:
            pass
    if isinstance(source, Path):
        if not source.exists():
            raise InvalidConfig(f"{source}: no such file or directory")
        if source.is_dir():
            files = sorted(p for p in source.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
            out: list[Document] = []
            for f in files:
                out += _read_text(f.read_text(), str(f), namespace)
            return out
        return _read_text(source.read_text(), str(source), namespace)
    return _read_text(source, "", namespace)


def load_documents(source: str | Path, namespace: str = "default") -> list[resources_pb2.Resource]:
    """The Resources of `read_documents`, or InvalidConfig with every problem of every document."""
    docs = read_documents(source, namespace)
    errors = [replace(e, resource=d.where) for d in docs for e in d.errors]
    if errors:
        raise InvalidConfig(*errors)
    return [d.resource for d in docs if d.resource is not None]


def holds_redacted(msg: Message) -> bool:
    """Whether a secret field of `msg` holds "[redacted]" (a document read back with Get): such a
    document is validated once control has put the stored values back."""
    probe = type(msg)()
    probe.CopyFrom(msg)
    try:
        restore(probe, None)
    except ValueError:
        return True
    return False


def to_document(res: resources_pb2.Resource) -> dict[str, Any]:
    """A Resource as the camelCase document a user would write (plus read-only status fields)."""
    msg = unwrap(res)
    doc: dict[str, Any] = json_format.MessageToDict(msg)
    doc.pop("apiVersion", None)
    doc.pop("kind", None)
    out: dict[str, Any] = {"apiVersion": API_VERSION, "kind": msg.DESCRIPTOR.name}
    out.update(doc)
    return out


def touched(meta: resources_pb2.ObjectMeta, now: int) -> None:
    """A write at `now`: the update time moves, the creation time stays (AGE counts from it). A new
    object is created now; one stored before creation times were kept, at its last update."""
    meta.creation_time_unix_nano = meta.creation_time_unix_nano or meta.update_time_unix_nano or now
    meta.update_time_unix_nano = now


def redacted(msg: Any) -> Any:
    """A copy of `msg` with every secret value "[redacted]" (what read paths return)."""
    out = type(msg)()
    out.CopyFrom(msg)
    redact(out)
    return out

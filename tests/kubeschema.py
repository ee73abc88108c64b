"""What the Kubernetes API server does with a custom resource's structural schema (the CRD's
openAPIV3Schema), for the in-test API server (kubeapi.py): pruning of fields the schema does not
declare (kept under `x-kubernetes-preserve-unknown-fields`), defaulting (`default`, where the parent
object is present), and validation with the API server's field paths and messages (types, `required`,
`enum`, `minimum`/`maximum`, lengths, `pattern`, `format: byte|date-time`,
`x-kubernetes-int-or-string`). `metadata` is ObjectMeta: its unknown fields are pruned too.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

JSON = dict[str, Any]
CRDS = Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "crds.yaml"
OBJECT_META = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)
_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
}


def load_schemas(path: Path = CRDS) -> dict[tuple[str, str], JSON]:
    """(apiVersion, kind) -> the openAPIV3Schema of each served version of each CRD in `path`."""
    out: dict[tuple[str, str], JSON] = {}
    for crd in yaml.safe_load_all(path.read_text()):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for version in spec["versions"]:
            if version.get("served", True):
                out[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = version["schema"][
                    "openAPIV3Schema"
                ]
    return out


@dataclass(frozen=True)
class Cause:
    """One field error, as a Status's details.causes entry has it."""

    reason: str  # FieldValueRequired | FieldValueInvalid | FieldValueNotSupported
    field: str
    message: str

    def text(self) -> str:
        return f"{self.field}: {self.message}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ------------------------------------------------------------------ pruning


def prune(obj: JSON, schema: JSON) -> list[str]:
    """Drop what the schema does not declare, in place; the dropped fields' paths, sorted."""
    dropped: list[str] = []
    for key in list(obj):
        if key in ("apiVersion", "kind"):
            continue
        if key == "metadata" and isinstance(obj[key], dict):
            for mkey in list(obj[key]):
                if mkey not in OBJECT_META:
                    del obj[key][mkey]
                    dropped.append(f"metadata.{mkey}")
            continue
        sub = (schema.get("properties") or {}).get(key)
        if sub is None:
            del obj[key]
            dropped.append(key)
            continue
        _prune(obj[key], sub, key, dropped)
    return sorted(dropped)


def _prune(value: Any, schema: JSON, path: str, dropped: list[str]) -> None:
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        keep_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        for key in list(value):
            if props is not None and key in props:
                _prune(value[key], props[key], _join(path, key), dropped)
            elif isinstance(extra, dict):
                _prune(value[key], extra, _join(path, key), dropped)
            elif not keep_unknown and extra is not True:
                del value[key]
                dropped.append(_join(path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _prune(item, schema["items"], f"{path}[{i}]", dropped)


# ------------------------------------------------------------------ defaulting


def apply_defaults(value: Any, schema: JSON) -> None:
    """Set each absent property that has a `default` (recursively, where its parent is present)."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                apply_defaults(value[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                if key not in props:
                    apply_defaults(value[key], extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(item, schema["items"])


# ------------------------------------------------------------------ validation


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _show(value: Any) -> str:
    """A value as the API server's field errors quote it."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _type_ok(value: Any, schema: JSON) -> str | None:
    """None when `value` has the schema's type, else the type the error names."""
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
        return None if ok else "integer,string"
    want = schema.get("type")
    if not want:
        return None
    if value is None:
        return None if schema.get("nullable") else want
    if want == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif want == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, _TYPES[want])
    return None if ok else want


def validate(obj: JSON, schema: JSON) -> list[Cause]:
    """Every field error of `obj` against its CRD schema (metadata is ObjectMeta, not checked here)."""
    causes: list[Cause] = []
    for key in schema.get("required") or []:
        if key not in obj:
            causes.append(Cause("FieldValueRequired", key, "Required value"))
    for key, value in obj.items():
        sub = (schema.get("properties") or {}).get(key)
        if sub is not None and key not in ("metadata", "apiVersion", "kind"):
            _validate(value, sub, key, causes)
    return causes


def _validate(value: Any, schema: JSON, path: str, causes: list[Cause]) -> None:
    wrong = _type_ok(value, schema)
    if wrong is not None:
        got = _type_name(value)
        causes.append(
            Cause(
                "FieldValueTypeInvalid",
                path,
                f'Invalid value: "{got}": {path} in body must be of type {wrong}: "{got}"',
            )
        )
        return
    if value is None:
        return
    enum = schema.get("enum")
    if enum is not None and value not in enum:
        allowed = ", ".join(_show(e) for e in enum)
        causes.append(
            Cause(
                "FieldValueNotSupported",
                path,
                f"Unsupported value: {_show(value)}: supported values: {allowed}",
            )
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _bounds(value, schema, path, causes)
    elif isinstance(value, str):
        _string(value, schema, path, causes)
    elif isinstance(value, dict):
        for key in schema.get("required") or []:
            if key not in value:
                causes.append(Cause("FieldValueRequired", _join(path, key), "Required value"))
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                _validate(item, props[key], _join(path, key), causes)
            elif isinstance(extra, dict):
                _validate(item, extra, _join(path, key), causes)
    elif isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            causes.append(
                Cause(
                    "FieldValueTooMany",
                    path,
                    f"Too many: {len(value)}: must have at most {schema['maxItems']} items",
                )
            )
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                _validate(item, schema["items"], f"{path}[{i}]", causes)


def _bounds(value: float, schema: JSON, path: str, causes: list[Cause]) -> None:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and (value < low or (schema.get("exclusiveMinimum") and value == low)):
        how = "greater than" if schema.get("exclusiveMinimum") else "greater than or equal to"
        causes.append(
            Cause(
                "FieldValueInvalid",
                path,
                f"Invalid value: {_show(value)}: {path} in body should be {how} {low}",
            )
        )
    if high is not None and (value > high or (schema.get("exclusiveMaximum") and value == high)):
        how = "less than" if schema.get("exclusiveMaximum") else "less than or equal to"
        causes.append(
            Cause(
                "FieldValueInvalid",
                path,
                f"Invalid value: {_show(value)}: {path} in body should be {how} {high}",
            )
        )


def _string(value: str, schema: JSON, path: str, causes: list[Cause]) -> None:
    def bad(why: str) -> None:
        causes.append(Cause("FieldValueInvalid", path, f"Invalid value: {_show(value)}: {why}"))

    if "maxLength" in schema and len(value) > schema["maxLength"]:
        causes.append(
            Cause("FieldValueTooLong", path, f"Too long: may not be more than {schema['maxLength']} bytes")
        )
    if "minLength" in schema and len(value) < schema["minLength"]:
        bad(f"{path} in body should be at least {schema['minLength']} chars long")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        bad(f"{path} in body should match '{schema['pattern']}'")
    fmt = schema.get("format")
    if fmt == "byte":
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            bad(f"{path} in body must be of type byte: {_show(value)}")
    elif fmt == "date-time":
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            bad(f"{path} in body must be of type date-time: {_show(value)}")


def invalid_message(kind: str, group: str, name: str, causes: list[Cause]) -> str:
    """The message of the API server's 422 Invalid Status for these causes."""
    texts = [c.text() for c in causes]
    listed = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return f'{kind}.{group} "{name}" is invalid: {listed}'

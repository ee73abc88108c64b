"""CustomResourceDefinitions for Api, Stage, UsagePlan and ApiKey, generated from the protos.

The structural OpenAPI v3 schema of each `spec` is derived from the message
descriptors (camelCase JSON names, maps as additionalProperties, 64-bit
integers as int-or-string like the proto JSON mapping), so the CRDs accept
exactly the documents `meshgate apply -f` accepts. `python -m
meshgate.control.crds > deploy/k8s/crds.yaml` regenerates; a test fails when
the committed file is stale.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import yaml
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from meshgate.v1 import resources_pb2

GROUP = "meshgate.io"
VERSION = "v1"

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "minimum": 0},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
    FieldDescriptor.TYPE_INT64: {"x-kubernetes-int-or-string": True},
    FieldDescriptor.TYPE_UINT64: {"x-kubernetes-int-or-string": True},
}


def _field(f: FieldDescriptor, seen: tuple[str, ...]) -> dict[str, Any]:
    mt = f.message_type
    if mt is not None and mt.GetOptions().map_entry:
        return {"type": "object", "additionalProperties": _field(mt.fields_by_name["value"], seen)}
    single = _message(mt, seen) if mt is not None else dict(_SCALARS.get(f.type, {"type": "string"}))
    if f.is_repeated:
        return {"type": "array", "items": single}
    return single


def _message(desc: Descriptor, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if desc.full_name in seen:  # a recursive type (websocketRoutes -> Integration): keep it open
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    seen = (*seen, desc.full_name)
    props = {f.json_name: _field(f, seen) for f in desc.fields}
    return {"type": "object", "properties": props}


# the key itself comes from a Secret; only its sha256 reaches etcd
_VALUE_FROM = {
    "type": "object",
    "properties": {
        "secretKeyRef": {
            "type": "object",
            "required": ["name", "key"],
            "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
        }
    },
}
_CONDITION = {
    "type": "object",
    "required": ["type", "status"],
    "properties": {
        "type": {"type": "string"},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "observedGeneration": {"type": "integer"},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
    },
}
_STATUS = {
    "type": "object",
    "properties": {
        "observedGeneration": {"type": "integer"},
        "conditions": {"type": "array", "items": _CONDITION},
        "ackedSidecars": {"type": "integer"},
        "boundSidecars": {"type": "integer"},
        # Stages: the deployment served (set by the controller)
        "deployment": {"type": "integer"},
    },
}
_COMMON_COLUMNS = [
    {
        "name": "Accepted",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Accepted")].status',
    },
    {
        "name": "Applied",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Applied")].status',
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _crd(
    kind: str, plural: str, spec: Any, columns: list[dict[str, str]], short: list[str]
) -> dict[str, Any]:
    spec_schema = _message(spec)
    if kind == "ApiKey":
        spec_schema["properties"]["valueFrom"] = _VALUE_FROM
    schema = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": _STATUS,
        },
    }
    version = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "additionalPrinterColumns": [*columns, *_COMMON_COLUMNS],
        "schema": {"openAPIV3Schema": schema},
    }
    names = {
        "kind": kind,
        "plural": plural,
        "singular": kind.lower(),
        "listKind": f"{kind}List",
        "shortNames": short,
    }
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {"group": GROUP, "scope": "Namespaced", "names": names, "versions": [version]},
    }
    return copy.deepcopy(crd)  # the shared parts stay the module's


def crds() -> list[dict[str, Any]]:
    return [
        _crd(
            "Api",
            "apis",
            resources_pb2.ApiSpec.DESCRIPTOR,
            [{"name": "Endpoint", "type": "string", "jsonPath": ".spec.endpointType"}],
            ["mgapi"],
        ),
        _crd(
            "Stage",
            "stages",
            resources_pb2.StageSpec.DESCRIPTOR,
            [
                {"name": "Api", "type": "string", "jsonPath": ".spec.api"},
                {"name": "Deployment", "type": "integer", "jsonPath": ".status.deployment"},
            ],
            ["mgstage"],
        ),
        _crd("UsagePlan", "usageplans", resources_pb2.UsagePlanSpec.DESCRIPTOR, [], ["mgplan"]),
        _crd(
            "ApiKey",
            "apikeys",
            resources_pb2.ApiKeySpec.DESCRIPTOR,
            [{"name": "Plan", "type": "string", "jsonPath": ".spec.usagePlan"}],
            ["mgkey"],
        ),
    ]


def render() -> str:
    header = "# Generated by `python -m meshgate.control.crds` from proto/meshgate/v1/resources.proto. Do not edit.\n"
    return header + yaml.safe_dump_all(crds(), sort_keys=False)


if __name__ == "__main__":
    sys.stdout.write(render())

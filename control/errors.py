"""Control-plane errors: one exception per gRPC status the admin RPCs return, each carrying every
refusal it stands for (`FieldError`: which resource, which field, why)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from meshgate.v1 import control_pb2


@dataclass(frozen=True, slots=True)
class FieldError:
    """One refusal: the field path first (`spec.routes[0].integration.type`), then why."""

    field: str  # "" when it is about the whole resource (or no resource)
    message: str
    resource: str = ""  # "Api default/pets", or where a document came from
    index: int | None = None  # the resource's position in an Apply batch

    def __str__(self) -> str:
        return ": ".join(part for part in (self.resource, self.field, self.message) if part)


class ControlError(Exception):
    """A refusal with one line per error and the gRPC status it maps to.

    `ControlError("text")` is one error without a field; `ControlError(FieldError(...), ...)` any
    number of them (Apply reports every error of its batch at once)."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, *errors: str | FieldError) -> None:
        self.errors = [e if isinstance(e, FieldError) else FieldError("", e) for e in errors]
        super().__init__("\n".join(str(e) for e in self.errors))


class InvalidConfig(ControlError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ControlError):
    code = grpc.StatusCode.NOT_FOUND


class Conflict(ControlError):
    code = grpc.StatusCode.ABORTED


class FailedPrecondition(ControlError):
    code = grpc.StatusCode.FAILED_PRECONDITION


ERRORS_TRAILER = "meshgate-errors-bin"  # a refused admin call's errors, as control_pb2.FieldErrors
MAX_ERRORS = 100  # a refusal carries at most this many (trailers travel in one HTTP/2 header block)


def errors_trailer(errors: list[FieldError]) -> tuple[tuple[str, bytes], ...]:
    """The trailing metadata that carries a refusal's errors, field by field, to the CLI."""
    out = control_pb2.FieldErrors()
    for e in errors[:MAX_ERRORS]:
        out.errors.add(index=e.index, resource=e.resource, field=e.field, message=e.message)
    return ((ERRORS_TRAILER, out.SerializeToString()),)


def errors_from_trailer(value: bytes) -> list[FieldError]:
    """The errors `errors_trailer` sent."""
    msg = control_pb2.FieldErrors.FromString(value)
    return [
        FieldError(e.field, e.message, e.resource, e.index if e.HasField("index") else None)
        for e in msg.errors
    ]

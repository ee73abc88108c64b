"""Control-plane errors: one exception per gRPC status the admin RPCs return."""

from __future__ import annotations

import grpc


class ControlError(Exception):
    """A refusal with a one-line message and the gRPC status it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidConfig(ControlError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ControlError):
    code = grpc.StatusCode.NOT_FOUND


class Conflict(ControlError):
    code = grpc.StatusCode.ABORTED


class FailedPrecondition(ControlError):
    code = grpc.StatusCode.FAILED_PRECONDITION

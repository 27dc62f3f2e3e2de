"""Typed domain errors.

Every error Capstan raises on purpose is a `CapstanError`. Each carries an MLflow-compatible ``code`` and the HTTP
status the server answers with, so the API layer never has to guess.
"""

from __future__ import annotations


class CapstanError(Exception):
    """Base of every deliberate Capstan error."""

    code = "INTERNAL_ERROR"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        """The JSON error body used by both the Capstan and the MLflow-compatible APIs."""
        return {"error_code": self.code, "message": self.message}


class InvalidParameterValue(CapstanError):
    """Input that is malformed or out of range; the message names the field."""

    code = "INVALID_PARAMETER_VALUE"
    http_status = 400


class ResourceDoesNotExist(CapstanError):
    """A named experiment, run, model, user, workload... does not exist."""

    code = "RESOURCE_DOES_NOT_EXIST"
    http_status = 404


class ResourceAlreadyExists(CapstanError):
    """Creating something whose unique name is taken."""

    code = "RESOURCE_ALREADY_EXISTS"
    http_status = 400


class InvalidState(CapstanError):
    """The object exists but is in a state that forbids the operation (e.g. logging to a deleted run)."""

    code = "INVALID_STATE"
    http_status = 400


class Unauthenticated(CapstanError):
    """No credential, or a credential that is unknown, revoked or expired."""

    code = "UNAUTHENTICATED"
    http_status = 401


class PermissionDenied(CapstanError):
    """The caller is known but its role does not allow the action."""

    code = "PERMISSION_DENIED"
    http_status = 403


class ArtifactTooLarge(CapstanError):
    """An artifact upload exceeded the configured size limit."""

    code = "INVALID_PARAMETER_VALUE"
    http_status = 413


class StoreUnavailable(CapstanError):
    """The metadata store or artifact store could not be reached."""

    code = "TEMPORARILY_UNAVAILABLE"
    http_status = 503


class RemoteError(CapstanError):
    """A Capstan server answered with an error the client cannot map to a narrower type."""

    def __init__(self, message: str, *, code: str = "INTERNAL_ERROR", http_status: int = 500) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status


_BY_CODE: dict[str, type[CapstanError]] = {
    cls.code: cls
    for cls in (InvalidParameterValue, ResourceDoesNotExist, ResourceAlreadyExists, InvalidState,
                Unauthenticated, PermissionDenied, StoreUnavailable)
}


def error_from_body(code: str, message: str, http_status: int) -> CapstanError:
    """Rebuild a typed error from a server's JSON error body."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return RemoteError(message, code=code, http_status=http_status)
    return cls(message)

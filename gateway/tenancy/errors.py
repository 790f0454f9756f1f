"""What can go wrong managing tenants, each naming the field at fault when there is one.

GatewayError
├── AccessDenied          403  (gateway/errors.py) a wrong or non-admin key
├── Unauthenticated       401  no admin key presented
├── InvalidField          400  a value is wrong; ``field`` says which
├── NotFound              404  no such tenant or credential
├── MethodNotAllowed      405  a known admin path that does not take this method
├── Conflict              409  it exists already, or changed since it was read
└── StoreDown             503  the tenant store did not answer
"""

from __future__ import annotations

from gateway.errors import GatewayError


class TenancyError(GatewayError):
    field: str | None = None

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Unauthenticated(TenancyError):
    error_type = "UnrecognizedClientException"
    status = 401


class InvalidField(TenancyError):
    error_type = "ValidationException"
    status = 400


class NotFound(TenancyError):
    error_type = "ResourceNotFoundException"
    status = 404


class MethodNotAllowed(TenancyError):
    error_type = "MethodNotAllowedException"
    status = 405

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow
        """The methods the path takes, for the ``Allow`` header."""


class Conflict(TenancyError):
    error_type = "ConflictException"
    status = 409


class StoreDown(TenancyError):
    error_type = "ServiceUnavailableException"
    status = 503

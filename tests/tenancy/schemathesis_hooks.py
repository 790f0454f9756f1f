"""schemathesis hooks for tests/tenancy/test_admin_schema.py (loaded by the CLI from
``SCHEMATHESIS_HOOKS``; not a test module).

One rule of the admin API is beyond JSON Schema: a credential's ``expires_at`` must be in the
future (``400`` naming ``expires_at`` otherwise). A generated time in the past would make
schemathesis's positive-data check fail on a request the schema calls valid, so before each
call such a time is moved a day past now: the request then goes down the path that issues a
credential, and the check stays on for every other field of it.
"""

from __future__ import annotations

import time
from typing import Any

import schemathesis

CREATE_CREDENTIAL = ("POST", "/admin/tenants/{tenant_id}/credentials")


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: Any) -> None:
    if (case.operation.method.upper(), case.operation.path) != CREATE_CREDENTIAL:
        return
    body = case.body
    if isinstance(body, dict):
        at = body.get("expires_at")
        if isinstance(at, int | float) and not isinstance(at, bool) and at <= time.time() + 60:
            body["expires_at"] = time.time() + 86400

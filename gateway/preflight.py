"""Start-up checks: what would stop the gateway from serving, found before the server starts.

Each problem is one ``StartupError``: a line naming the setting at fault and an exit code of
its own (documented in the README), instead of a traceback from inside the server's lifespan
or a process that hangs. A store that is down is fatal only with ``on_store_failure: deny``;
with ``local`` the gateway starts on its local share and says so.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
from collections.abc import Mapping

from gateway.config import ConfigError, GatewayConfig
from gateway.limiter.redis_store import RedisStore
from gateway.upstream.credentials import open_source

log = logging.getLogger("gateway.startup")

EXIT_CONFIG = 2
EXIT_CREDENTIALS = 3
EXIT_STORE = 4
EXIT_TLS = 5
EXIT_PORT = 6
CREDENTIALS_TIMEOUT_S = 15.0  # an assumed role goes to STS; IMDS probes time out on their own


class StartupError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def environment_problems(config: GatewayConfig, environ: Mapping[str, str]) -> list[str]:
    """Every environment variable the file names that ``serve`` would need and is not set,
    each as ``setting: environment variable NAME is not set`` (``check-config --env``)."""
    problems = []

    def need(where: str, name: str | None) -> None:
        if name is not None and not environ.get(name):
            problems.append(f"{where}: environment variable {name} is not set")

    limiter = config.limiter
    if limiter.backend == "redis" and not limiter.redis_url:
        need("limiter.redis_url_env", limiter.redis_url_env)
    for name, account in config.accounts.items():
        for field in ("access_key_id_env", "secret_access_key_env", "external_id_env"):
            need(f"accounts.{name}.{field}", getattr(account, field))  # a session token: optional
    for name, tenant in config.tenants.items():
        for i, key in enumerate(tenant.access_keys):
            need(f"tenants.{name}.access_keys.{i}.secret_env", key.secret_env)
    return problems


def check_port(host: str, port: int) -> None:
    """The listen address is free (a port of 0 picks one and is always free)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            probe.bind((host, port))
        except OSError as exc:
            why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc})"
            raise StartupError(f"server.port: {host}:{port} {why}", EXIT_PORT) from None


def check_tls(config: GatewayConfig) -> None:
    tls = config.server.tls
    if tls is None:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.certfile, tls.keyfile)
    except FileNotFoundError as exc:
        raise StartupError(f"server.tls: cannot read {exc.filename}: no such file",
                           EXIT_TLS) from None  # fmt: skip
    except (ssl.SSLError, OSError) as exc:
        message = (f"server.tls: certfile {tls.certfile} / keyfile {tls.keyfile} are not a "
                   f"usable certificate and key ({exc})")  # fmt: skip
        raise StartupError(message, EXIT_TLS) from None


async def check_credentials(config: GatewayConfig, environ: Mapping[str, str]) -> None:
    for name, account in config.accounts.items():
        try:
            await asyncio.wait_for(open_source(name, account, environ), CREDENTIALS_TIMEOUT_S)
        except ConfigError as exc:
            message = (f"{exc}: set access_key_id_env / secret_access_key_env, a profile or "
                       f"role_arn for it, or give the default AWS credential chain something "
                       f"to find")  # fmt: skip
            raise StartupError(message, EXIT_CREDENTIALS) from None
        except TimeoutError:
            raise StartupError(f"accounts.{name}: no AWS credentials within "
                               f"{CREDENTIALS_TIMEOUT_S:g} s (role_arn / STS or the credential "
                               f"chain did not answer)", EXIT_CREDENTIALS) from None  # fmt: skip
        except Exception as exc:  # botocore's own: a broken profile, STS refusing the role
            message = f"accounts.{name}: cannot get AWS credentials: {type(exc).__name__}: {exc}"
            raise StartupError(message, EXIT_CREDENTIALS) from None


async def check_store(config: GatewayConfig, environ: Mapping[str, str]) -> None:
    limiter = config.limiter
    if limiter.backend != "redis":
        return
    url = environ.get(limiter.redis_url_env or "") or limiter.redis_url
    if not url:
        raise StartupError(f"limiter.redis_url_env: environment variable "
                           f"{limiter.redis_url_env} is not set", EXIT_CONFIG)  # fmt: skip
    store = RedisStore.from_url(url, limiter.timeout_s * 4)
    try:
        reachable = await store.ping()
    finally:
        await store.close()
    if reachable:
        return
    where = "limiter.redis_url_env" if limiter.redis_url_env else "limiter.redis_url"
    address = url.rsplit("@", 1)[-1].split("?", 1)[0]  # never print a password
    if limiter.on_store_failure == "deny":
        raise StartupError(f"{where}: Redis at {address} does not answer, and "
                           f"limiter.on_store_failure is deny", EXIT_STORE)  # fmt: skip
    log.warning(
        "%s: Redis at %s does not answer; starting on this replica's local share of "
        "each quota (on_store_failure: local) until it does",
        where,
        address,
    )


def warn_memory_store(config: GatewayConfig, environ: Mapping[str, str]) -> None:
    """A memory store enforces every quota in this process alone: say so loudly where this
    process is likely one of several replicas."""
    if config.limiter.backend != "memory":
        return
    hints = []
    if config.limiter.replicas > 1:
        hints.append(f"limiter.replicas is {config.limiter.replicas}")
    if "KUBERNETES_SERVICE_HOST" in environ:
        hints.append("it runs in Kubernetes")
    if hints:
        log.warning("limiter.backend is memory but %s: every replica on its own memory store "
                    "enforces the whole quota by itself; use backend: redis to share it",
                    " and ".join(hints))  # fmt: skip


def run(config: GatewayConfig, environ: Mapping[str, str] | None = None) -> None:
    """Every check, cheapest first; raises the first ``StartupError``."""
    environ = os.environ if environ is None else environ
    check_port(config.server.host, config.server.port)
    check_tls(config)
    warn_memory_store(config, environ)

    async def remote() -> None:
        await check_credentials(config, environ)
        await check_store(config, environ)

    asyncio.run(remote())

"""``bedrock-gateway quotas sync``: read the applied quotas, show how the config differs from
them, and with ``--write`` update the file in place (comments kept, see ``yamledit``).

Exit status: 0 in sync or written; 1 differences remain (no ``--write``), so a CI job can
fail on drift; 2 on errors (bad config, AWS unreachable or refusing, file not writable).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from gateway.config import ConfigError, load_config
from gateway.quotas.client import QuotaFetchError, fetch_rows
from gateway.quotas.sync import SyncReport, apply_diff, compute, render, routes_of
from gateway.quotas.yamledit import YamlEditError

IN_SYNC, DIFFERENT, FAILED = 0, 1, 2


def run_sync(
    path: str, *, write: bool, environ: Mapping[str, str], out: TextIO, err: TextIO
) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"bedrock-gateway: invalid configuration: {exc}", file=err)
        return FAILED
    try:
        rows = asyncio.run(fetch_rows(config, environ))
    except QuotaFetchError as exc:
        print(f"bedrock-gateway: cannot read the applied quotas: {exc}", file=err)
        return FAILED
    report = compute(routes_of(config), rows)
    out.write(render(report))
    if not report.changes:
        return IN_SYNC
    if not write:
        print(f"run again with --write to update {path}", file=out)
        return DIFFERENT
    return _write(Path(path), report, out, err)


def _write(path: Path, report: SyncReport, out: TextIO, err: TextIO) -> int:
    try:
        with path.open(encoding="utf-8", newline="") as handle:  # keep CRLF files CRLF
            original = handle.read()
        _replace(path, apply_diff(original, report.changes))
    except (OSError, YamlEditError) as exc:
        print(f"bedrock-gateway: {path} not updated: {exc}", file=err)
        return FAILED
    try:
        load_config(path)
    except ConfigError as exc:
        _replace(path, original)
        print(f"bedrock-gateway: the update made the file invalid, restored: {exc}", file=err)
        return FAILED
    print(f"wrote {len(report.changes)} changes to {path}", file=out)
    return IN_SYNC


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to a sibling file, then rename it over ``path``: never half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""Shared test setup.

Tests that need root, network namespaces or /dev/net/tun skip with a reason
when run without them.  In CI (``CI=true``) we are root and they must run, so
there a skip of such a test is turned into a failure.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def need(condition: bool, reason: str) -> None:
    """Skip unless ``condition``; in CI, fail instead of skipping."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI but unavailable: {reason}")
    pytest.skip(reason)


def need_root() -> None:
    need(os.geteuid() == 0, "needs root")


def need_tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    need(path is not None, f"needs the {name} program")
    return path  # type: ignore[return-value]

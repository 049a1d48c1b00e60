"""End-to-end fixtures: a real shellgate daemon in front of real OpenSSH sshd
targets, reached with the real OpenSSH client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness.gateway import GatewayProcess
from harness.sshd import TargetSshd

pytestmark = pytest.mark.e2e


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """``make_gateway({"web1": sshd}, **options)`` -> a started daemon, killed after."""
    made: list[GatewayProcess] = []

    def make(targets: dict[str, TargetSshd], *, start: bool = True, **kw: object) -> GatewayProcess:
        gw = GatewayProcess.create(tmp_path / f"gw{len(made)}", targets, **kw)  # type: ignore[arg-type]
        made.append(gw)
        return gw.start() if start else gw

    yield make
    for gw in made:
        gw.cleanup()


@pytest.fixture
def gateway(make_gateway: Callable[..., GatewayProcess], target_sshd: TargetSshd) -> GatewayProcess:
    """A daemon with one target ``web1``; alice (admin) and bob may log in as root."""
    return make_gateway({"web1": target_sshd})

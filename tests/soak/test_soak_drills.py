"""The long drills of issue 6 (``make soak``): the quick drills of
tests/e2e/test_drills.py with the issue's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e.test_drills import (
    MakeGateway,
    drill_crash,
    drill_hostile_flood,
    drill_leaks,
    drill_load,
)
from harness.sshd import TargetSshd

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1200)]


async def test_soak_crash(make_gateway: MakeGateway, target_sshd: TargetSshd) -> None:
    await drill_crash(make_gateway, target_sshd, sessions=16, seconds=5.0)


async def test_soak_load_200_sessions(
    make_gateway: MakeGateway, target_sshd: TargetSshd, tmp_path: Path
) -> None:
    await drill_load(make_gateway, target_sshd, tmp_path, sessions=200, size=1_000_000)


async def test_soak_hostile_1000(make_gateway: MakeGateway, target_sshd: TargetSshd) -> None:
    await drill_hostile_flood(make_gateway, target_sshd, 1000, concurrency=50, rss_slack_kib=30_000)


async def test_soak_leaks_10000_sessions(
    make_gateway: MakeGateway, target_sshd: TargetSshd
) -> None:
    await drill_leaks(make_gateway, target_sshd, 10_000, concurrency=8, rss_slack_kib=20_000)

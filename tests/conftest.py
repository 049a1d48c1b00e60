"""Fixtures shared by every test: a real sshd target, user keys, terminals, and
the guarantee that no process started by the harness outlives the session.

Nothing here imports the gateway, so the harness and the unit tests run while
the gateway is still being written.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

# The harness is imported as the top-level package ``harness`` whatever pytest's
# rootdir handling does (a tests/__init__.py added later would otherwise move it).
# The repository root goes first: pytest puts tests/ on sys.path, where the
# directory tests/config/ would otherwise be imported as a namespace package
# named ``config`` in place of the real one (the editable install's finder is
# asked only after sys.path).
_TESTS = Path(__file__).resolve().parent
for _entry in (str(_TESTS), str(_TESTS.parent)):
    if _entry in sys.path:
        sys.path.remove(_entry)
    sys.path.insert(0, _entry)

from harness import procs  # noqa: E402  (needs the sys.path entry above)
from harness.keys import KeyPair, generate_key  # noqa: E402
from harness.net import free_port as _free_port  # noqa: E402
from harness.sshd import TargetSshd  # noqa: E402
from harness.tmux import TmuxTerminal  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_processes() -> Iterator[None]:
    """At the end of the session, kill (by pid) whatever the harness still tracks."""
    yield
    leaked = procs.kill_all()
    if leaked:
        warnings.warn(f"test harness processes outlived their tests: {leaked}", stacklevel=1)


@pytest.fixture
def target_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TargetSshd]:
    """A fresh OpenSSH sshd on a free loopback port, killed after the test."""
    with TargetSshd(tmp_path_factory.mktemp("sshd")) as sshd:
        yield sshd


@pytest.fixture(scope="module")
def target_sshd_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TargetSshd]:
    """One sshd for a whole module: cheaper, for tests that do not kill or restart it."""
    with TargetSshd(tmp_path_factory.mktemp("sshd")) as sshd:
        yield sshd


@pytest.fixture
def user_key(tmp_path: Path) -> KeyPair:
    """An ed25519 key pair for a gateway user (``.private``, ``.public``, ``.public_line``)."""
    return generate_key(tmp_path / "user-keys", "alice", comment="alice@test")


@pytest.fixture
def make_key(tmp_path: Path) -> Callable[..., KeyPair]:
    """``make_key("bob")`` -> another key pair in this test's directory."""

    def make(name: str, key_type: str = "ed25519") -> KeyPair:
        return generate_key(tmp_path / "user-keys", name, key_type=key_type, comment=name)

    return make


@pytest.fixture
def tmux() -> Iterator[Callable[..., TmuxTerminal]]:
    """``tmux(argv, cols=80, rows=24, env=None)`` -> a started TmuxTerminal; every
    terminal made is killed after the test."""
    made: list[TmuxTerminal] = []

    def start(
        command: str | Sequence[str],
        *,
        cols: int = 80,
        rows: int = 24,
        env: dict[str, str] | None = None,
    ) -> TmuxTerminal:
        term = TmuxTerminal(command, cols=cols, rows=rows, env=env)
        made.append(term)
        return term.start()

    yield start
    for term in made:
        term.close()


@pytest.fixture
def free_port() -> Callable[[], int]:
    """``free_port()`` -> a loopback port free a moment ago (bind it soon; retry
    on "address in use")."""
    return _free_port

"""The test harness: real OpenSSH servers and clients, terminals, keys, and a
registry that makes sure every process started for a test is gone after it.

Import it as ``harness`` (``tests/conftest.py`` puts ``tests/`` on sys.path),
never as ``tests.harness``: two copies would mean two process registries.
"""

from harness.keys import KeyPair, UserCA, certificate_principals, generate_key
from harness.net import free_port, read_banner, wait_for_port
from harness.ssh_client import ClientTimeout, Completed, SshClient, run, run_sync
from harness.sshd import TargetSshd
from harness.tmux import ScreenTimeout, TmuxTerminal

__all__ = [
    "ClientTimeout",
    "Completed",
    "KeyPair",
    "ScreenTimeout",
    "SshClient",
    "TargetSshd",
    "TmuxTerminal",
    "UserCA",
    "certificate_principals",
    "free_port",
    "generate_key",
    "read_banner",
    "run",
    "run_sync",
    "wait_for_port",
]

"""``shellgate serve`` refusing to start: one line that names what is wrong
(the data directory, the host key, the listen address, the control socket),
exit status 1, never a traceback. The real CLI in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from harness.gateway import SHELLGATE

ROOT = Path(__file__).resolve().parents[2]


def _serve(config: Path) -> tuple[int, list[str]]:
    """Exit status and the lines on stderr that are not the daemon's JSON logs."""
    r = subprocess.run(
        [*SHELLGATE, "serve", "--config", str(config)],
        cwd=config.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    return r.returncode, [ln for ln in r.stderr.splitlines() if not ln.startswith("{")]


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shellgate.toml"
    path.write_text('[gateway]\nlisten = "127.0.0.1:0"\n' + text)
    return path


def test_a_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    rc, lines = _serve(_config(tmp_path, 'data_dir = "a-file/var"\n'))
    assert rc == 1
    where = tmp_path / "a-file" / "var"
    assert lines == [f"shellgate: cannot create the data directory {where}: Not a directory"]


def test_a_host_key_that_is_not_a_key(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "hk").write_text("not a key\n")
    config = _config(tmp_path, 'host_keys = ["var/hk"]\n')
    rc, lines = _serve(config)
    assert rc == 1
    assert lines == [
        f"{config}: gateway.host_keys[0]: {tmp_path / 'var' / 'hk'} is not a usable private key: "
        "Invalid private key"
    ]


@pytest.mark.parametrize("listen", ["256.1.1.1:22", "in-use"])
def test_a_listen_address_that_cannot_be_used(tmp_path: Path, listen: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if listen == "in-use":
            listen = f"127.0.0.1:{taken.getsockname()[1]}"
        config = tmp_path / "shellgate.toml"
        config.write_text(f'[gateway]\nlisten = "{listen}"\n')
        rc, lines = _serve(config)
    assert rc == 1
    assert len(lines) == 1 and lines[0].startswith(f"shellgate: cannot listen on {listen}: "), lines


def test_a_control_socket_path_too_long(tmp_path: Path) -> None:
    data_dir = tmp_path / ("d" * 110)
    rc, lines = _serve(_config(tmp_path, f'data_dir = "{data_dir}"\n'))
    assert rc == 1
    assert lines == [
        f"shellgate: cannot create the control socket {data_dir / 'control.sock'}: "
        "AF_UNIX path too long"
    ]

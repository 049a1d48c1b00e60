"""Recordings and commands, end to end: keys typed into a real terminal (tmux)
running the real OpenSSH client through the real daemon to a real sshd, checked
through ``shellgate commands/export/audit`` and the files on disk. Issue 4,
"How it is tested"."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cast_validator import validate_cast
from harness.gateway import GatewayProcess
from harness.sshd import TargetSshd
from harness.tmux import TmuxTerminal
from harness.waiting import poll, small_tmpfs

pytestmark = pytest.mark.e2e

ASCIINEMA = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "asciinema"
SECRET = "hunter2-SECRET"


# -- helpers --------------------------------------------------------------------------


def shell_in_tmux(
    tmux: Callable[..., TmuxTerminal], gw: GatewayProcess, user: str = "alice"
) -> TmuxTerminal:
    term = tmux(gw.to("web1", user=user).ssh_args(tty=True), cols=100, rows=30)
    term.wait_for("root@target", timeout=15)
    return term


def connection_of(gw: GatewayProcess, user: str = "alice") -> dict:
    rows = poll(lambda: gw.cli_json("connections", "--user", user), message="a connection")
    assert isinstance(rows, list) and len(rows) == 1, rows
    return rows[0]


def closed_connection(gw: GatewayProcess, user: str = "alice") -> dict:
    def closed() -> dict | None:
        rows = gw.cli_json("connections", "--user", user)
        return rows[0] if len(rows) == 1 and rows[0]["state"] == "closed" else None

    row = poll(closed, message="the connection closed")
    assert isinstance(row, dict)
    return row


def commands_of(gw: GatewayProcess, connection_id: str) -> list[str]:
    return [str(c["command"]) for c in gw.cli_json("commands", "--connection", connection_id)]


def export(gw: GatewayProcess, connection_id: str, tmp_path: Path) -> tuple[Path, dict, list]:
    out = tmp_path / f"{connection_id}.cast"
    r = gw.cli("export", connection_id, "-o", str(out))
    assert r.returncode == 0, r
    header, events = validate_cast(out)
    return out, header, events


def asciinema_cat(path: Path) -> str:
    done = subprocess.run(
        [str(ASCIINEMA), "cat", str(path)], capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.decode(errors="replace")


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def joined(events: list, code: str) -> str:
    return "".join(data for _, c, data in events if c == code)


# -- a real session with editing keys and a password prompt ------------------------------


def test_edited_commands_and_password_prompt(
    gateway: GatewayProcess,
    target_sshd: TargetSshd,
    tmux: Callable[..., TmuxTerminal],
    tmp_path: Path,
) -> None:
    (target_sshd.home / "zebra-quartz-notes.txt").write_text("notes-file-content\n")
    term = shell_in_tmux(tmux, gateway)
    conn = connection_of(gateway)

    # Backspace.
    term.send_text("echo helloo")
    term.send_keys("BSpace", "Enter")
    term.wait_for("\nhello\n")
    # Ctrl-U kills the whole line.
    term.send_text("echo wrong-line")
    term.send_keys("C-u")
    term.send_line("echo after-ctrl-u")
    term.wait_for("\nafter-ctrl-u\n")
    # Ctrl-W kills a word.
    term.send_text("echo one two")
    term.send_keys("C-w")
    term.send_line("three")
    term.wait_for("\none three\n")
    # Left arrow and an insertion in the middle.
    term.send_text("echo ac")
    term.send_keys("Left")
    term.send_text("b")
    term.send_keys("Enter")
    term.wait_for("\nabc\n")
    # History: Up recalls `echo abc`; append to it.
    term.send_keys("Up")
    term.wait_for(re.compile(r"# echo abc\s*\Z"), timeout=5)
    term.send_text("d")
    term.send_keys("Enter")
    term.wait_for("\nabcd\n")
    # Tab completion of a file name: the completed text comes back only as echo.
    term.send_text("cat zebra-q")
    term.send_keys("Tab")
    term.wait_for("cat zebra-quartz-notes.txt")
    term.send_keys("Enter")
    term.wait_for("\nnotes-file-content\n")
    # A backslash continuation: one command over two lines.
    term.send_text("echo cont\\")
    term.send_keys("Enter")
    term.wait_for("> ")
    term.send_line("inued")
    term.wait_for("\ncontinued\n")
    # A password prompt: nothing typed while echo is off is a command or input.
    term.send_line('read -s -p "Password: " pw; echo got ${#pw}')
    term.wait_for("Password: ")
    term.send_line(SECRET)
    term.wait_for(f"got {len(SECRET)}")
    term.send_line("exit")
    assert term.wait_exit(15) == 0
    closed_connection(gateway)

    assert commands_of(gateway, conn["id"]) == [
        "echo hello",
        "echo after-ctrl-u",
        "echo one three",
        "echo abc",
        "echo abcd",
        "cat zebra-quartz-notes.txt",
        "echo cont\\\ninued",
        'read -s -p "Password: " pw; echo got ${#pw}',
        "exit",
    ]

    out, header, events = export(gateway, conn["id"], tmp_path)
    assert header["version"] == 2
    assert (header["width"], header["height"]) == (100, 30)
    assert header.get("title") == "alice -> root@web1"
    assert events[-1][1:] == ("m", "closed: client_exit")
    assert out.read_bytes() == Path(conn["cast_path"]).read_bytes()
    text = asciinema_cat(out)
    for seen in ("after-ctrl-u", "one three", "abcd", "notes-file-content", "continued"):
        assert seen in text, seen
    assert f"got {len(SECRET)}" in text
    # Redacted (the default): what was echoed is input, the password is not.
    typed = joined(events, "i")
    assert "after-ctrl-u" in typed
    assert SECRET not in typed and "hunter2" not in typed

    # The secret is nowhere: not in the recordings, the database (and its WAL)
    # or the gateway's log, while the daemon runs and after it stopped.
    for needle in (SECRET.encode(), b"hunter2"):
        assert files_containing(gateway.data_dir, needle) == []
        assert needle not in (gateway.directory / "gateway.log").read_bytes()
    assert gateway.stop() == 0
    for needle in (SECRET.encode(), b"hunter2"):
        assert files_containing(gateway.data_dir, needle) == []
        assert needle not in (gateway.directory / "gateway.log").read_bytes()


# -- exec -------------------------------------------------------------------------------


async def test_exec_is_exactly_one_command(gateway: GatewayProcess, tmp_path: Path) -> None:
    command = "echo first; echo second && echo 'third  spaced'"
    r = await gateway.to("web1").ssh(command)
    assert r.returncode == 0 and r.stdout == b"first\nsecond\nthird  spaced\n"
    conn = closed_connection(gateway)
    assert commands_of(gateway, conn["id"]) == [command]
    out, header, events = export(gateway, conn["id"], tmp_path)
    assert header.get("command") == command
    assert "third  spaced" in joined(events, "o")
    assert "third  spaced" in asciinema_cat(out)


# -- input recording modes --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["on", "off"])
def test_input_recording_modes(
    make_gateway: Callable[..., GatewayProcess],
    target_sshd: TargetSshd,
    tmux: Callable[..., TmuxTerminal],
    tmp_path: Path,
    mode: str,
) -> None:
    gw = make_gateway({"web1": target_sshd}, recording_toml=f'input = "{mode}"')
    term = shell_in_tmux(tmux, gw)
    term.send_line("echo typed-in-$((40+2))")
    term.wait_for("typed-in-42")
    term.send_line("exit")
    assert term.wait_exit(15) == 0
    conn = closed_connection(gw)
    _, _header, events = export(gw, conn["id"], tmp_path)
    inputs = [data for _, code, data in events if code == "i"]
    if mode == "on":
        assert "echo typed-in-$((40+2))" in "".join(inputs)
    else:
        assert inputs == []
    assert "typed-in-42" in joined(events, "o")
    # Commands are extracted whatever the input mode.
    assert commands_of(gw, conn["id"]) == ["echo typed-in-$((40+2))", "exit"]


# -- a full-screen program ----------------------------------------------------------------


def test_keys_typed_in_vim_are_not_commands(
    gateway: GatewayProcess, target_sshd: TargetSshd, tmux: Callable[..., TmuxTerminal]
) -> None:
    vim = shutil.which("vim") or shutil.which("vi")
    if vim is None:
        pytest.skip("no vim or vi on this machine")
    term = shell_in_tmux(tmux, gateway)
    conn = connection_of(gateway)
    term.send_line(f"{vim} -u NONE -N edited.txt")
    # vim's own status line, not the echo of the command: typing before the
    # program has switched screens is type-ahead that the shell prompt owns.
    term.wait_for('"edited.txt" [New]')
    term.send_text("ihello from vim")
    term.send_keys("Enter")
    term.send_text("echo not-a-command")
    term.send_keys("Escape")
    term.send_text(":wq")
    term.send_keys("Enter")
    term.wait_for("root@target")
    term.send_line("cat edited.txt")
    term.wait_for("\nhello from vim\n")
    term.send_line("exit")
    assert term.wait_exit(15) == 0
    closed_connection(gateway)
    assert (target_sshd.home / "edited.txt").read_text() == "hello from vim\necho not-a-command\n"
    assert commands_of(gateway, conn["id"]) == [
        f"{vim} -u NONE -N edited.txt",
        "cat edited.txt",
        "exit",
    ]


# -- file transfers -----------------------------------------------------------------------


async def test_sftp_and_scp_are_audited_not_recorded(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    local = tmp_path / "up.txt"
    local.write_text("transfer me\n")
    client = gateway.to("web1")
    r = await client.sftp([f"put {local} {tmp_path / 'sftp.txt'}"])
    assert r.returncode == 0, r.stderr
    r = await client.scp(str(local), client.remote(tmp_path / "scp.txt"), legacy=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sftp.txt").read_text() == (tmp_path / "scp.txt").read_text()

    def transfers() -> list[dict] | None:
        rows = [a for a in gateway.cli_json("audit") if a["action"] == "transfer_opened"]
        return rows if len(rows) >= 2 else None

    audit = poll(transfers, message="two transfer audit entries")
    assert isinstance(audit, list) and len(audit) == 2, audit
    sftp, scp = audit
    assert "sftp" in str(sftp["detail"]) and "scp" in str(scp["detail"])
    for a in audit:
        assert (a["actor"], a["target"]) == ("alice", "web1")
        assert str(a["client_addr"]).startswith("127.0.0.1:")
    assert gateway.cli_json("connections") == []
    assert gateway.cli_json("commands") == []
    assert list((gateway.data_dir / "recordings").iterdir()) == []


# -- a recording that cannot be written -----------------------------------------------------


def _break_recordings_dir(gw: GatewayProcess) -> None:
    """Make every new cast fail to open, for root too: chmod does not stop root,
    but a *file* where the directory was gives ENOTDIR to any user. Done after
    start-up (the daemon would rightly refuse to start with it)."""
    rec = gw.data_dir / "recordings"
    rec.rename(gw.data_dir / "recordings.moved")
    rec.write_text("not a directory\n")


@pytest.mark.parametrize("tty", [False, True], ids=["exec", "shell"])
async def test_recording_failure_closes_with_error(gateway: GatewayProcess, tty: bool) -> None:
    _break_recordings_dir(gateway)
    r = await gateway.to("web1").ssh("echo must-not-run" if not tty else None, tty=tty)
    assert r.returncode == 1
    assert b"must-not-run" not in r.stdout
    line = r.stderr.decode().replace("\r\n", "\n").strip("\n")
    assert line.startswith("shellgate: recording") and "\n" not in line, r.stderr
    assert "could not be created" in line and "Not a directory" in line
    conn = closed_connection(gateway)
    assert (conn["reason"], conn["closed_by"]) == ("error", "system")
    assert "Not a directory" in str(conn["message"])
    audit = gateway.cli_json("audit")
    assert [a["connection_id"] for a in audit if a["action"] == "recording_failed"] == [conn["id"]]


async def test_recording_failure_continues_when_configured(
    make_gateway: Callable[..., GatewayProcess], target_sshd: TargetSshd
) -> None:
    gw = make_gateway({"web1": target_sshd}, recording_toml='on_failure = "continue"')
    _break_recordings_dir(gw)
    r = await gw.to("web1").ssh("echo unrecorded-but-allowed")
    assert (r.returncode, r.stdout) == (0, b"unrecorded-but-allowed\n"), r
    conn = closed_connection(gw)
    assert (conn["reason"], conn["cast_path"]) == ("client_exit", None)
    audit = gw.cli_json("audit")
    assert [a["connection_id"] for a in audit if a["action"] == "recording_failed"] == [conn["id"]]


@pytest.fixture
def small_recordings_fs(gateway: GatewayProcess) -> Iterator[Path]:
    """The running daemon's recordings directory on a 64 KiB tmpfs (to fill it)."""
    rec = gateway.data_dir / "recordings"
    with small_tmpfs(rec, "64k"):
        try:
            yield rec
        finally:
            # the daemon holds files on it: stop it before the unmount
            with contextlib.suppress(Exception):
                gateway.cleanup()


def test_disk_full_mid_session_closes_with_error(
    gateway: GatewayProcess, small_recordings_fs: Path, tmux: Callable[..., TmuxTerminal]
) -> None:
    term = shell_in_tmux(tmux, gateway)
    conn = connection_of(gateway)
    assert Path(conn["cast_path"]).parent == small_recordings_fs
    # Fill the filesystem to the last byte.
    with open(small_recordings_fs / "filler", "wb", buffering=0) as f:
        for size in (4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    term.send_line("seq 1 3000")  # far more output than one free block
    status = term.wait_exit(15)
    assert status != 0
    screen = term.screen(history=True, join_wrapped=True)
    assert "shellgate: connection recording" in screen and "could not be written" in screen
    row = closed_connection(gateway)
    assert (row["reason"], row["closed_by"]) == ("error", "system")
    assert "No space left on device" in str(row["message"])
    os.unlink(small_recordings_fs / "filler")
    # What reached the disk is still a valid cast.
    validate_cast(conn["cast_path"])


async def test_disk_full_before_connection_refuses_it(
    gateway: GatewayProcess, small_recordings_fs: Path
) -> None:
    with open(small_recordings_fs / "filler", "wb", buffering=0) as f:
        for size in (4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    r = await gateway.to("web1").ssh("echo must-not-run", timeout=20)
    assert r.returncode == 1, r
    assert b"must-not-run" not in r.stdout
    line = r.stderr.decode().strip("\n")
    assert line.startswith("shellgate: recording") and "\n" not in line, r.stderr
    assert "No space left on device" in line
    conn = closed_connection(gateway)
    assert (conn["reason"], conn["closed_by"]) == ("error", "system")

"""A terminal for tests: a private tmux server running one command in a pane of
a known size, driven by keys and read back as screen text.

Each terminal has its own server (``tmux -L <unique name>``) so tests never see
each other's panes or the user's tmux. The server's config is ours, not the
user's: the status line is off so the pane is exactly the size asked for, and
``remain-on-exit`` keeps a finished pane's last screen readable.

The exit status does not come from tmux's ``pane_dead_status``: tmux 3.3a here
sometimes never reaps a pane's exited process (it stays a zombie and the pane
never dies), which hung tests. Instead a small ``sh`` in the pane runs the
command as its child and writes ``$?`` to a file.

Polling helpers come in a blocking form (``wait_for``) and a coroutine form
(``wait_for_async``): a test whose gateway runs in its own event loop must use
the coroutine, or the loop stops relaying while the test waits for output.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from harness import procs
from harness.env import clean_env

TMUX_CONF = """\
set -g remain-on-exit on
set -g status off
set -g history-limit 20000
set -g default-shell /bin/sh
set -g escape-time 0
set -g default-terminal screen
"""


class ScreenTimeout(TimeoutError):
    """What a test waited for never appeared; the message carries the screen."""


class TmuxTerminal:
    """One command in a ``cols`` x ``rows`` terminal.

    ``command`` is an argv list (run directly, so :attr:`pane_pid` is its pid) or
    a shell string. ``env`` adds to the clean environment (HOME is a throwaway
    directory, no SSH_AUTH_SOCK).
    """

    def __init__(
        self,
        command: str | Sequence[str],
        *,
        cols: int = 80,
        rows: int = 24,
        env: dict[str, str] | None = None,
    ) -> None:
        self.socket_name = f"shellgate-test-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        self._dir = Path(tempfile.mkdtemp(prefix="shellgate-tmux-"))
        self._status = self._dir / "exit-status"
        inner = (
            shlex.join(["sh", "-c", command]) if isinstance(command, str) else shlex.join(command)
        )
        # Not exec'd: the wrapper sh must outlive the command to record its status.
        self.command = f"{inner}\necho $? > {shlex.quote(str(self._status))}"
        self.cols, self.rows = cols, rows
        self._conf = self._dir / "tmux.conf"
        self._conf.write_text(TMUX_CONF)
        self._env = clean_env(**(env or {}))
        self._server: procs.Tracked | None = None
        self.pane_id = ""
        self.socket_path = ""

    # -- lifecycle -------------------------------------------------------------------

    def tmux(self, *args: str, check: bool = True) -> str:
        """Run one tmux command against this terminal's server; its stdout."""
        done = subprocess.run(
            ["tmux", "-L", self.socket_name, "-f", str(self._conf), *args],
            capture_output=True,
            text=True,
            env=self._env,
            timeout=10,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def start(self) -> TmuxTerminal:
        out = self.tmux(
            "new-session", "-d", "-s", "main",
            "-x", str(self.cols), "-y", str(self.rows),
            "-P", "-F", "#{pane_id} #{pid} #{socket_path}",
            self.command,
        )  # fmt: skip
        pane_id, server_pid, self.socket_path = out.strip().split(" ", 2)
        self.pane_id = pane_id
        # The server daemonises: it is no child of ours, so it is tracked by pid.
        self._server = procs.register(int(server_pid), f"tmux server {self.socket_name}")
        return self

    def close(self) -> None:
        """Kill the tmux server and everything running in it; remove its files."""
        if self._server is not None:
            tree = [self._server.pid, *procs.descendants(self._server.pid)]
            starts = {p: procs.start_time(p) for p in tree}
            self.tmux("kill-server", check=False)
            # kill-server HUPs the panes; anything that ignores it is killed.
            procs.kill(self._server, sig=signal.SIGTERM, grace=2.0)
            for p, t in starts.items():
                if procs.is_alive(p, t):
                    procs.kill_tree(p, t)
            self._server = None
        if self.socket_path:
            with contextlib.suppress(OSError):
                os.unlink(self.socket_path)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> TmuxTerminal:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def server_pid(self) -> int | None:
        return self._server.pid if self._server else None

    def _format(self, fmt: str) -> str:
        return self.tmux("display-message", "-p", "-t", self.pane_id, fmt).rstrip("\n")

    @property
    def pane_pid(self) -> int:
        """The pid of the pane's process: the wrapper ``sh`` that records the exit status."""
        return int(self._format("#{pane_pid}"))

    @property
    def command_pid(self) -> int | None:
        """The pid of the command itself (the ``ssh`` client), None once it ended."""
        children = [
            p for p in procs.descendants(self.pane_pid) if procs.parent_pid(p) == self.pane_pid
        ]
        return children[0] if children else None

    # -- input -----------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Type ``text`` literally (``\\n`` and ``\\r`` are sent as typed, so
        ``send_text("ls\\r")`` types ls and presses Enter)."""
        self.tmux("send-keys", "-t", self.pane_id, "-l", "--", text)

    def send_keys(self, *keys: str) -> None:
        """Press tmux-named keys: ``"Enter"``, ``"C-c"``, ``"C-d"``, ``"Up"``,
        ``"BSpace"``, ``"Tab"``."""
        self.tmux("send-keys", "-t", self.pane_id, "--", *keys)

    def send_line(self, text: str) -> None:
        """Type ``text`` and press Enter."""
        self.send_text(text)
        self.send_keys("Enter")

    def resize(self, cols: int, rows: int) -> None:
        """Change the terminal size; the pane's program gets SIGWINCH."""
        self.tmux("resize-window", "-t", self.pane_id, "-x", str(cols), "-y", str(rows))
        self.cols, self.rows = cols, rows

    # -- output ----------------------------------------------------------------------

    def screen(self, *, history: bool = False, join_wrapped: bool = False) -> str:
        """The visible screen as text (trailing spaces dropped); with ``history``
        the scrollback too; with ``join_wrapped`` long lines are not split."""
        args = ["capture-pane", "-p", "-t", self.pane_id]
        if history:
            args += ["-S", "-"]
        if join_wrapped:
            args.append("-J")
        return self.tmux(*args)

    @property
    def size(self) -> tuple[int, int]:
        cols, rows = self._format("#{pane_width} #{pane_height}").split()
        return int(cols), int(rows)

    @property
    def dead(self) -> bool:
        """Whether the command has ended."""
        return self.exit_status is not None

    @property
    def exit_status(self) -> int | None:
        """The command's exit status once it ended (128+N for death by signal N,
        as a shell reports it), None while it runs."""
        try:
            text = self._status.read_text()
        except FileNotFoundError:
            return None
        # The file is created empty by the redirection, then written.
        return int(text) if text.strip() else None

    def _matches(self, pattern: str | re.Pattern[str], text: str) -> bool:
        if isinstance(pattern, str):
            return pattern in text
        return pattern.search(text) is not None

    def wait_for(
        self,
        pattern: str | re.Pattern[str],
        timeout: float = 10.0,
        *,
        history: bool = False,
        join_wrapped: bool = True,
    ) -> str:
        """Poll until ``pattern`` (a substring, or a compiled regex) is on the
        screen; returns that screen. ScreenTimeout shows the last screen."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen(history=history, join_wrapped=join_wrapped)
            if self._matches(pattern, text):
                return text
            if time.monotonic() >= deadline:
                raise ScreenTimeout(self._timeout_message(pattern, timeout, text))
            time.sleep(0.03)

    async def wait_for_async(
        self,
        pattern: str | re.Pattern[str],
        timeout: float = 10.0,
        *,
        history: bool = False,
        join_wrapped: bool = True,
    ) -> str:
        """:meth:`wait_for` that lets the event loop run between polls."""
        deadline = time.monotonic() + timeout
        while True:
            text = await asyncio.to_thread(self.screen, history=history, join_wrapped=join_wrapped)
            if self._matches(pattern, text):
                return text
            if time.monotonic() >= deadline:
                raise ScreenTimeout(self._timeout_message(pattern, timeout, text))
            await asyncio.sleep(0.03)

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the command to end; its exit status."""
        deadline = time.monotonic() + timeout
        while (status := self.exit_status) is None:
            if time.monotonic() >= deadline:
                raise ScreenTimeout(self._timeout_message("<exit>", timeout, self.screen()))
            time.sleep(0.03)
        return status

    async def wait_exit_async(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while (status := await asyncio.to_thread(lambda: self.exit_status)) is None:
            if time.monotonic() >= deadline:
                raise ScreenTimeout(self._timeout_message("<exit>", timeout, self.screen()))
            await asyncio.sleep(0.03)
        return status

    def _timeout_message(self, pattern: object, timeout: float, text: str) -> str:
        shown = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
        return f"{shown!r} not on screen after {timeout}s; screen:\n{text}"

    def __repr__(self) -> str:
        return f"<TmuxTerminal {self.socket_name} {self.cols}x{self.rows}>"

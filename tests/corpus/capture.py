"""Capture the command-extractor corpus from real shells in a real pty.

Run: ``.venv/bin/python tests/corpus/capture.py [CASE ...]`` (all cases when
none named). Each case starts a shell (``bash --norc --noprofile -i`` unless
the case says otherwise) in a fresh pty with a clean HOME, types real
keystrokes with small delays, records both directions with timestamps and
writes ``tests/corpus/<case>.json``:

    {"name", "shell", "cols", "rows",
     "expected": [command, ...],     # what the shell accepted, in order
     "secrets": [text, ...],         # typed at no-echo prompts; must leak nowhere
     "events": [[t, "i"|"o", data], ...]}   # data: the bytes as latin-1 text

No sshd is needed: what the extractor sees through the gateway is exactly the
pty's byte stream, which is what is recorded here.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import struct
import sys
import tempfile
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent

KEY_DELAY = 0.03  # between typed characters: a fast typist
QUIET = 0.25  # output silence that means "the shell is waiting"

UP, DOWN, LEFT, RIGHT = b"\x1b[A", b"\x1b[B", b"\x1b[D", b"\x1b[C"
HOME_KEY, END_KEY = b"\x1b[H", b"\x1b[F"
PASTE_START, PASTE_END = b"\x1b[200~", b"\x1b[201~"

Step = tuple[str, bytes | float]


def type_(text: str | bytes) -> Step:
    """Type ``text`` key by key, then wait for the shell to go quiet."""
    return ("type", text.encode() if isinstance(text, str) else text)


def send(data: bytes) -> Step:
    """Send ``data`` in one write (a paste, or a key sequence), then wait."""
    return ("send", data)


def burst(data: bytes) -> Step:
    """Send ``data`` in one write and do not wait (typing ahead)."""
    return ("burst", data)


def pause(seconds: float) -> Step:
    return ("pause", seconds)


PS1_COLOR = r"\[\e[1;32m\]\u@\h\[\e[0m\]:\[\e[1;34m\]\w\[\e[0m\]\$ "
PS1_OSC133 = r"\[\e]133;A\a\]\u:\w\$ \[\e]133;B\a\]"


@dataclass
class Case:
    name: str
    steps: list[Step]
    expected: list[str]
    shell: str = "bash"
    ps1: str | None = None
    cols: int = 80
    rows: int = 24
    secrets: list[str] = field(default_factory=list)
    bracketed_paste: bool = True


CASES = [
    Case("simple", [type_("echo hello\r"), type_("true\r")], ["echo hello", "true"]),
    Case("backspace_del", [type_("echo helxx\x7f\x7flo\r")], ["echo hello"]),
    Case("backspace_ctrl_h", [type_("echo abcd\x08\x08xy\r")], ["echo abxy"]),
    Case("ctrl_u", [type_("rm -rf junk\x15echo ok\r")], ["echo ok"]),
    Case("ctrl_w", [type_("echo one two\x17three\r")], ["echo one three"]),
    Case(
        "ctrl_k",
        [type_(b"echo abc def" + LEFT * 4 + b"\x0b\r")],
        ["echo abc"],
    ),
    Case("ctrl_a_ctrl_e", [type_("cho hi\x01e\x05 there\r")], ["echo hi there"]),
    Case(
        "arrows_insert",
        [type_(b"echo wrld" + LEFT * 3 + b"o" + RIGHT * 3 + b"!\r")],
        ["echo world!"],
    ),
    Case(
        "home_end",
        [type_(b"cho x" + HOME_KEY + b"e" + END_KEY + b" y\r")],
        ["echo x y"],
    ),
    Case(
        "history",
        [
            type_("echo first\r"),
            type_("echo second\r"),
            send(UP),
            send(UP),
            send(b"\r"),
            send(UP),
            send(UP),
            send(DOWN),
            type_(" again\r"),
        ],
        ["echo first", "echo second", "echo first", "echo first again"],
    ),
    Case(
        "reverse_search",
        [
            type_("echo needle\r"),
            type_("echo other\r"),
            send(b"\x12"),
            type_("need"),
            send(b"\r"),
        ],
        ["echo needle", "echo other", "echo needle"],
    ),
    Case(
        "tab_completion",
        [
            type_("touch uniquefilename.txt\r"),
            type_("cat uniq\t"),
            type_("\r"),
            type_("ech\t"),
            type_("done\r"),
        ],
        ["touch uniquefilename.txt", "cat uniquefilename.txt", "echo done"],
    ),
    Case(
        "bracketed_paste",
        [send(PASTE_START + b"echo pasted" + PASTE_END), type_("\r")],
        ["echo pasted"],
    ),
    Case(
        "bracketed_paste_multiline",
        [send(PASTE_START + b"echo one\recho two" + PASTE_END), type_("\r")],
        ["echo one", "echo two"],
    ),
    Case(
        "paste_unbracketed_lines",
        [send(b"echo one\recho two\recho three\r")],
        ["echo one", "echo two", "echo three"],
        bracketed_paste=False,
    ),
    Case(
        "backslash_continuation",
        [type_("echo a \\\r"), type_("b \\\r"), type_("c\r")],
        ["echo a \\\nb \\\nc"],
    ),
    Case(
        "open_quote",
        [type_("echo 'x\r"), type_("y'\r"), type_('echo "p\r'), type_('q"\r')],
        ["echo 'x\ny'", 'echo "p\nq"'],
    ),
    Case(
        "long_line_wrap",
        [type_("echo " + "abcdefghij" * 9 + "\r")],
        ["echo " + "abcdefghij" * 9],
        cols=40,
    ),
    Case(
        "ctrl_c",
        [type_("echo abandoned\x03"), type_("echo kept\r")],
        ["echo kept"],
    ),
    Case(
        "type_ahead",
        [burst(b"sleep 1\r"), pause(0.3), type_("echo ahead\r"), pause(1.0)],
        ["sleep 1", "echo ahead"],
    ),
    Case(
        "chains",
        [type_("echo a; echo b && echo c || echo d\r")],
        ["echo a; echo b && echo c || echo d"],
    ),
    Case(
        "password_read_s",
        [
            type_('read -s -p "Password: " p\r'),
            type_("hunter2secret\r"),
            type_("echo done\r"),
        ],
        ['read -s -p "Password: " p', "echo done"],
        secrets=["hunter2secret"],
    ),
    Case(
        "password_silent_prompt",
        [type_("read -s p\r"), type_("s3cr3tz\r"), type_("echo after\r")],
        ["read -s p", "echo after"],
        secrets=["s3cr3tz"],
    ),
    Case(
        "vim",
        [
            type_("vim -u NONE -N -i NONE f.txt\r"),
            pause(0.5),
            type_("ihello from vim\r"),
            send(b"\x1b"),
            type_(":wq\r"),
            type_("cat f.txt\r"),
        ],
        ["vim -u NONE -N -i NONE f.txt", "cat f.txt"],
    ),
    Case(
        "less",
        [
            type_("seq 1 200 > n.txt\r"),
            type_("less n.txt\r"),
            type_("/150\r"),
            type_("q"),
            type_("echo out\r"),
        ],
        ["seq 1 200 > n.txt", "less n.txt", "echo out"],
    ),
    Case(
        "color_prompt",
        [type_("echo colored\r"), type_("cd /tmp\r"), type_("pwd\r")],
        ["echo colored", "cd /tmp", "pwd"],
        ps1=PS1_COLOR,
    ),
    Case(
        "osc133_prompt",
        [type_("echo marked\r"), type_(b"echo x" + LEFT + b"y\r")],
        ["echo marked", "echo yx"],
        ps1=PS1_OSC133,
    ),
    Case(
        "scrolling_output",
        [type_("seq 1 100\r"), type_("echo end\r")],
        ["seq 1 100", "echo end"],
    ),
    Case(
        "fast_enter",
        [send(b"echo fast\r"), send(b"echo faster\r")],
        ["echo fast", "echo faster"],
    ),
    Case(
        "type_ahead_burst",
        [burst(b"sleep 0.5\r"), burst(b"echo ahead\r"), pause(1.5)],
        ["sleep 0.5", "echo ahead"],
    ),
    Case(
        "ctrl_c_continuation",
        [type_("echo 'open\r"), type_("more\x03"), type_("echo fine\r")],
        ["echo fine"],
    ),
    Case("comment_apostrophe", [type_("echo hi # don't\r")], ["echo hi # don't"]),
    Case("empty_lines", [type_("\r"), type_("   \r"), type_("echo x\r")], ["echo x"]),
    Case(
        "tab_listing",
        [
            type_("touch apple1 apple2\r"),
            type_("ls app\t"),
            send(b"\t"),
            type_("2\r"),
        ],
        ["touch apple1 apple2", "ls apple2"],
    ),
    Case(
        "wrap_with_editing",
        [type_(b"echo " + b"x" * 50 + b"MID" + b"y" * 20 + LEFT * 23 + b"\x7f\x7f\x7fZ\r")],
        ["echo " + "x" * 47 + "ZMID" + "y" * 20],
        cols=40,
    ),
    Case(
        "unicode",
        [type_("echo héllo wörld 日本\r"), type_("echo 日本語x\x7f\x7f!\r")],
        ["echo héllo wörld 日本", "echo 日本!"],
    ),
    Case(
        "vi_mode",
        [type_("set -o vi\r"), type_("echo wrong\x1b"), type_("bcwright\r")],
        ["set -o vi", "echo right"],
    ),
    Case(
        "zsh_editing",
        [
            type_("echo helxx\x7f\x7flo\r"),
            type_("rm -rf junk\x15echo ok\r"),
            type_("echo one two\x17three\r"),
            type_(b"echo wrld" + LEFT * 3 + b"o\r"),
            type_("cho hi\x01e\x05 there\r"),
        ],
        ["echo hello", "echo ok", "echo one three", "echo world", "echo hi there"],
        shell="zsh",
    ),
    Case(
        "zsh_history_completion",
        [
            type_("touch uniquefilename.txt\r"),
            type_("cat uniq\t"),
            type_("\r"),
            send(UP),
            send(UP),
            type_(" again\r"),
        ],
        ["touch uniquefilename.txt", "cat uniquefilename.txt", "touch uniquefilename.txt again"],
        shell="zsh",
    ),
    Case(
        "zsh_paste_quote_ctrl_c",
        [
            send(PASTE_START + b"echo one\recho two" + PASTE_END),
            type_("\r"),
            type_("echo 'x\r"),
            type_("y'\r"),
            type_("echo abandoned\x03"),
            type_("echo kept\r"),
        ],
        ["echo one", "echo two", "echo 'x\ny'", "echo kept"],
        shell="zsh",
    ),
    Case(
        "zsh_password",
        [type_('read -s "p?Password: "\r'), type_("hunter2zsh\r"), type_("echo done\r")],
        ['read -s "p?Password: "', "echo done"],
        secrets=["hunter2zsh"],
        shell="zsh",
    ),
    Case(
        "dash_editing",
        [type_("echo one\r"), type_("echo twx\x7fo\r"), type_("junk\x15echo three\r")],
        ["echo one", "echo two", "echo three"],
        shell="dash",
    ),
]


def spawn(case: Case, home: str) -> tuple[int, int]:
    env = {
        "HOME": home,
        "TERM": "xterm-256color",
        "LANG": "C.UTF-8",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HISTFILE": os.path.join(home, ".bash_history"),
        "USER": "root",
    }
    if case.ps1 is not None:
        env["PS1"] = case.ps1
    if case.shell == "bash":
        argv = ["bash", "--norc", "--noprofile", "-i"]
        if case.ps1 is None:
            env["PS1"] = r"\s-\v\$ "
        if not case.bracketed_paste:
            Path(home, ".inputrc").write_text("set enable-bracketed-paste off\n")
        else:
            Path(home, ".inputrc").write_text("set enable-bracketed-paste on\n")
        env["INPUTRC"] = os.path.join(home, ".inputrc")
    elif case.shell == "zsh":
        argv = ["zsh", "-f", "-i"]  # -f: no startup files
        env["PS1"] = case.ps1 or "%n@%m %~ %# "
    else:
        argv = [case.shell, "-i"]
        env["PS1"] = case.ps1 or "$ "
    pid, fd = os.forkpty()
    if pid == 0:  # child
        try:
            os.chdir(home)
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", case.rows, case.cols, 0, 0))
    return pid, fd


def capture(case: Case) -> dict[str, object]:
    events: list[list[object]] = []
    with tempfile.TemporaryDirectory() as home:
        pid, fd = spawn(case, home)
        start = time.monotonic()

        def now() -> float:
            return round(time.monotonic() - start, 6)

        def read_until_quiet(quiet: float = QUIET, limit: float = 5.0) -> None:
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                ready, _, _ = select.select([fd], [], [], quiet)
                if not ready:
                    return
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    return
                if not data:
                    return
                events.append([now(), "o", data.decode("latin-1")])

        def write(data: bytes) -> None:
            events.append([now(), "i", data.decode("latin-1")])
            os.write(fd, data)

        read_until_quiet(quiet=0.5)
        for kind, arg in case.steps:
            if kind == "type":
                assert isinstance(arg, bytes)
                i = 0
                while i < len(arg):
                    # An escape sequence is one key: send it in one write.
                    j = i + 1
                    while arg[i] >= 0xC0 and j < len(arg) and 0x80 <= arg[j] < 0xC0:
                        j += 1  # a UTF-8 character is one key
                    if arg[i] == 0x1B and arg[i + 1 : i + 2] == b"[":
                        j = i + 2
                        while j < len(arg) and not (0x40 <= arg[j] <= 0x7E):
                            j += 1
                        j += 1
                    write(arg[i:j])
                    read_until_quiet(quiet=KEY_DELAY)
                    i = j
                read_until_quiet()
            elif kind == "send":
                assert isinstance(arg, bytes)
                write(arg)
                read_until_quiet()
            elif kind == "burst":
                assert isinstance(arg, bytes)
                write(arg)
            elif kind == "pause":
                assert isinstance(arg, float)
                read_until_quiet(quiet=arg, limit=arg + 5)
        read_until_quiet()
        os.kill(pid, signal.SIGHUP)
        read_until_quiet(quiet=0.2, limit=1.0)
        os.close(fd)
        os.waitpid(pid, 0)
    return {
        "name": case.name,
        "shell": case.shell,
        "cols": case.cols,
        "rows": case.rows,
        "expected": case.expected,
        "secrets": case.secrets,
        "events": events,
    }


def main(names: list[str]) -> None:
    for case in CASES:
        if names and case.name not in names:
            continue
        data = capture(case)
        path = HERE / f"{case.name}.json"
        path.write_text(json.dumps(data, indent=1, ensure_ascii=True) + "\n")
        print(f"{case.name}: {len(data['events'])} events -> {path.name}")  # type: ignore[arg-type]


if __name__ == "__main__":
    main(sys.argv[1:])

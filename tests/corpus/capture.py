"""Capture the command-extractor corpus from real shells with real keystrokes.

Run from the repository root::

    .venv/bin/python tests/corpus/capture.py [--via pty|sshd|all] [CASE ...]

``--via sshd`` (the corpus the issue asks for) starts a real OpenSSH sshd per
case (``tests/harness/sshd.py`` ``TargetSshd``: a free loopback port, a clean
HOME), runs the real OpenSSH client ``ssh -tt ... 127.0.0.1`` as root in a
local pty (``os.forkpty``) sized to the case, types the keystrokes into that
pty and records what goes in and what comes out: the client's input bytes and
the output bytes as they arrive, which is exactly the byte stream a gateway
relays between the two SSH legs. The shell is the target sshd's login shell
(root's ``bash -l``); the case's setup (PS1, bracketed paste on/off, OSC 133
prompt marks, LANG) goes into the sshd HOME's ``.bashrc`` / ``.inputrc``, so no
setup line is ever typed and the expected command lists are exactly what the
case types. zsh and dash cases run as root's login bash ``exec``-ing
``zsh -f -i`` / ``dash -i`` from that ``.bashrc`` (root's login shell is not
changed on this machine). These cases are written as
``tests/corpus/sshd-<shell>-<behaviour>.json``.

``--via pty`` (the default, the original corpus) starts the shell
(``bash --norc --noprofile -i`` unless the case says otherwise) directly in a
fresh pty with a clean HOME and writes ``tests/corpus/<case>.json``.
``--via all`` captures both. CASE names select cases (file stems).

Every case file has the same format::

    {"name", "via": "pty"|"sshd", "shell", "cols", "rows",
     "expected": [command, ...],     # what the shell accepted, in order
     "secrets": [text, ...],         # typed at no-echo prompts; must leak nowhere
     "events": [[t, "i"|"o", data], ...]}   # data: the bytes as latin-1 text

Keys are typed one at a time with small delays (an escape sequence or a UTF-8
character is one key), and every process started here is ended by its pid
(the ssh client) or by the ``TargetSshd`` context manager (sshd and its
sessions).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import shlex
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
    vias: tuple[str, ...] = ("pty", "sshd")  # how this case may be captured


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
    # zsh through sshd only (the pty corpus has its own zsh cases above).
    Case(
        "zsh_reverse_search_chains",
        [
            type_("echo needle\r"),
            type_("echo other\r"),
            send(b"\x12"),
            type_("need"),
            send(b"\r"),
            type_("echo a; echo b && echo c || echo d\r"),
        ],
        ["echo needle", "echo other", "echo needle", "echo a; echo b && echo c || echo d"],
        shell="zsh",
        vias=("sshd",),
    ),
    Case(
        "zsh_continuation_wrap",
        [
            type_("echo a \\\r"),
            type_("b\r"),
            type_("echo " + "abcdefghij" * 9 + "\r"),
            type_(b"echo abc def" + LEFT * 4 + b"\x0b\r"),
        ],
        ["echo a \\\nb", "echo " + "abcdefghij" * 9, "echo abc"],
        shell="zsh",
        cols=40,
        vias=("sshd",),
    ),
    Case(
        "zsh_type_ahead_vim",
        [
            burst(b"sleep 1\r"),
            pause(0.3),
            type_("echo ahead\r"),
            pause(1.0),
            type_("vim -u NONE -N -i NONE f.txt\r"),
            pause(0.5),
            type_("ihello from vim\r"),
            send(b"\x1b"),
            type_(":wq\r"),
            type_("cat f.txt\r"),
        ],
        ["sleep 1", "echo ahead", "vim -u NONE -N -i NONE f.txt", "cat f.txt"],
        shell="zsh",
        vias=("sshd",),
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


def drive(case: Case, fd: int, first_output: float) -> list[list[object]]:
    """Type the case's steps into the pty master ``fd``, recording both
    directions; wait up to ``first_output`` seconds for the first prompt."""
    events: list[list[object]] = []
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

    ready, _, _ = select.select([fd], [], [], first_output)  # the login, the first prompt
    if not ready:
        raise RuntimeError(f"{case.name}: no output within {first_output}s")
    read_until_quiet(quiet=0.5, limit=first_output)
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
    return events


def record(case: Case, name: str, via: str, events: list[list[object]]) -> dict[str, object]:
    return {
        "name": name,
        "via": via,
        "shell": case.shell,
        "cols": case.cols,
        "rows": case.rows,
        "expected": case.expected,
        "secrets": case.secrets,
        "events": events,
    }


def capture(case: Case) -> dict[str, object]:
    """The shell directly in a local pty (``--via pty``)."""
    with tempfile.TemporaryDirectory() as home:
        pid, fd = spawn(case, home)
        try:
            events = drive(case, fd, first_output=5.0)
        finally:
            os.kill(pid, signal.SIGHUP)
            _drain(fd)
            os.close(fd)
            os.waitpid(pid, 0)
    return record(case, case.name, "pty", events)


def _drain(fd: int, limit: float = 1.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            return
        try:
            if not os.read(fd, 65536):
                return
        except OSError:
            return


# -- through a real sshd (--via sshd) ------------------------------------------------

SSHD_BASH_PS1 = r"\u@target:\w\$ "
SSHD_ZSH_PS1 = "%n@target %~ %# "
SSHD_DASH_PS1 = "$ "


def sshd_name(case: Case) -> str:
    """``sshd-<shell>-<behaviour>``: ``backspace_del`` -> ``sshd-bash-backspace_del``,
    ``zsh_editing`` -> ``sshd-zsh-editing``."""
    behaviour = case.name
    if behaviour.startswith(case.shell + "_"):
        behaviour = behaviour[len(case.shell) + 1 :]
    return f"sshd-{case.shell}-{behaviour}"


def sshd_rc(case: Case) -> tuple[str, str]:
    """The sshd HOME's ``.bashrc`` and ``.inputrc`` for ``case``: all its setup,
    so that nothing but the case's own keystrokes is typed."""
    lines = [
        "# Written by tests/corpus/capture.py (--via sshd): this case's shell setup.",
        "PROMPT_COMMAND=",
        'HISTFILE="$HOME/.bash_history"',
        'case $- in *i*) cd "$HOME" ;; esac',
    ]
    if case.shell == "bash":
        lines.append("PS1=" + shlex.quote(case.ps1 or SSHD_BASH_PS1))
    elif case.shell == "zsh":
        ps1 = case.ps1 or SSHD_ZSH_PS1
        lines += ["export PS1=" + shlex.quote(ps1), "exec zsh -f -i"]  # -f: no startup files
    else:
        ps1 = case.ps1 or SSHD_DASH_PS1
        lines += ["export PS1=" + shlex.quote(ps1), f"exec {case.shell} -i"]
    inputrc = f"set enable-bracketed-paste {'on' if case.bracketed_paste else 'off'}\n"
    return "\n".join(lines) + "\n", inputrc


def spawn_ssh(args: list[str], case: Case, client_home: str) -> tuple[int, int]:
    """The OpenSSH client in a fresh local pty of the case's size."""
    env = {
        "HOME": client_home,
        "TERM": "xterm-256color",
        "LANG": "C.UTF-8",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }
    pid, fd = os.forkpty()
    if pid == 0:  # child: size the pty before ssh reads it for its pty-req
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", case.rows, case.cols, 0, 0))
            os.execvpe(args[0], args, env)
        finally:
            os._exit(127)
    return pid, fd


def capture_sshd(case: Case) -> dict[str, object]:
    """The target sshd's login shell, reached by ``ssh -tt`` in a local pty."""
    sys.path.insert(0, str(HERE.parent))  # tests/: the harness package
    from harness.sshd import TargetSshd

    with TargetSshd() as target, tempfile.TemporaryDirectory() as client_home:
        bashrc, inputrc = sshd_rc(case)
        (target.home / ".bashrc").write_text(bashrc)
        (target.home / ".inputrc").write_text(inputrc)
        client = target.client(strict=False).with_options("EscapeChar=none", "SendEnv=LANG")
        args = client.ssh_args(tty=True)
        pid, fd = spawn_ssh(args, case, client_home)
        try:
            events = drive(case, fd, first_output=15.0)
        finally:
            os.kill(pid, signal.SIGTERM)  # the ssh client, by its pid
            _drain(fd)
            os.close(fd)
            os.waitpid(pid, 0)
    return record(case, sshd_name(case), "sshd", events)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--via", choices=("pty", "sshd", "all"), default="pty")
    parser.add_argument("cases", nargs="*", help="case names (file stems); all when none")
    opts = parser.parse_args(argv)
    vias = ("pty", "sshd") if opts.via == "all" else (opts.via,)
    for via in vias:
        for case in CASES:
            if via not in case.vias:
                continue
            name = sshd_name(case) if via == "sshd" else case.name
            if opts.cases and name not in opts.cases and case.name not in opts.cases:
                continue
            data = capture_sshd(case) if via == "sshd" else capture(case)
            path = HERE / f"{name}.json"
            path.write_text(json.dumps(data, indent=1, ensure_ascii=True) + "\n")
            print(f"{name}: {len(data['events'])} events -> {path.name}", flush=True)  # type: ignore[arg-type]


if __name__ == "__main__":
    main(sys.argv[1:])

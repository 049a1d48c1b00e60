"""Every process the test harness starts goes through this registry, so none
outlives the suite.

Processes are tracked by pid together with their start time (field 22 of
``/proc/PID/stat``): a pid can be reused by an unrelated process once ours is
gone, and killing by a stale pid must never hit somebody else's process. Trees
are found through ``/proc`` parent links, not process groups, because sshd's
per-connection children call ``setsid()`` and leave the listener's group.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Tracked:
    """One process the harness started (or found, e.g. a daemonised tmux server)."""

    pid: int
    what: str
    start_time: int | None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)


_registry: dict[int, Tracked] = {}
_lock = threading.Lock()


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may hold spaces
    and parentheses), so index 0 is the state, 1 the ppid, 19 the start time."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def start_time(pid: int) -> int | None:
    """Clock ticks since boot at which ``pid`` started, or None if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid``, or None if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def is_alive(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead); with ``started``, whether
    it is still the same process and not a reuse of its pid."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def _parent_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(name))
    return children


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (children first, then theirs)."""
    children = _parent_map()
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def register(pid: int, what: str, popen: subprocess.Popen[bytes] | None = None) -> Tracked:
    """Track ``pid`` until :func:`unregister` or the end of the session."""
    tracked = Tracked(pid=pid, what=what, start_time=start_time(pid), popen=popen)
    with _lock:
        _registry[pid] = tracked
    return tracked


def unregister(pid: int) -> None:
    with _lock:
        _registry.pop(pid, None)


def registered() -> list[Tracked]:
    """What is tracked now (a copy)."""
    with _lock:
        return list(_registry.values())


def _signal(pid: int, started: int | None, sig: int) -> None:
    if not is_alive(pid, started):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def kill_tree(
    pid: int,
    started: int | None = None,
    *,
    sig: int = signal.SIGKILL,
    grace: float = 3.0,
    popen: subprocess.Popen[bytes] | None = None,
) -> list[int]:
    """End ``pid`` and every descendant; returns the pids that were signalled.

    With SIGKILL the tree is first frozen with SIGSTOP, and re-read until no new
    process appears, so nothing forks out from under us while we kill it. With a
    gentler signal, whatever is still alive after ``grace`` seconds is SIGKILLed.
    """
    if not is_alive(pid, started):
        _reap(popen)
        return []
    tree: dict[int, int | None] = {pid: started}
    if sig == signal.SIGKILL:
        while True:
            for p, t in list(tree.items()):
                _signal(p, t, signal.SIGSTOP)
            found = {p: start_time(p) for p in descendants(pid) if p not in tree}
            for p in list(tree):
                if p != pid:
                    found.update({c: start_time(c) for c in descendants(p) if c not in tree})
            if not found:
                break
            tree.update(found)
    else:
        tree.update({p: start_time(p) for p in descendants(pid)})
    for p, t in tree.items():
        _signal(p, t, sig)
    if sig != signal.SIGKILL:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(is_alive(p, t) for p, t in tree.items()):
            _reap(popen)
            time.sleep(0.02)
        for p, t in tree.items():
            _signal(p, t, signal.SIGKILL)
    _reap(popen, wait=True)
    # Our own children that were SIGKILLed become zombies until reaped; give
    # the kernel a moment so is_alive() reads the final state in tests.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(is_alive(p, t) for p, t in tree.items()):
        time.sleep(0.01)
    return list(tree)


def _reap(popen: subprocess.Popen[bytes] | None, wait: bool = False) -> None:
    if popen is None:
        return
    try:
        if wait:
            popen.wait(timeout=5)
        else:
            popen.poll()
    except subprocess.TimeoutExpired:
        pass


def kill(tracked: Tracked, *, sig: int = signal.SIGKILL, grace: float = 3.0) -> list[int]:
    """End a tracked process and its tree, and stop tracking it."""
    try:
        return kill_tree(tracked.pid, tracked.start_time, sig=sig, grace=grace, popen=tracked.popen)
    finally:
        unregister(tracked.pid)


def kill_all() -> list[str]:
    """End everything still tracked; returns a description of each one that
    was still alive (a leak the caller may want to report)."""
    leaked = []
    for tracked in registered():
        if is_alive(tracked.pid, tracked.start_time):
            leaked.append(f"{tracked.what} (pid {tracked.pid})")
        kill(tracked)
    return leaked


# A run stopped by Ctrl-C or an internal error may skip fixture teardown; the
# interpreter's exit still gets here.
atexit.register(kill_all)

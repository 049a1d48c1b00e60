"""Table tests of the asciicast writer: bytes and times in, cast lines out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recorder.cast import MAX_EVENT_BYTES, CastWriter
from tests.cast_validator import validate_cast

ASCIINEMA = Path(sys.executable).with_name("asciinema")


def writer(**kw: object) -> CastWriter:
    args: dict[str, object] = {
        "env": {"TERM": "xterm-256color", "SHELL": "/bin/bash"},
        "title": "alice -> root@web1",
        "input_mode": "on",
    }
    args.update(kw)
    return CastWriter(80, 24, 1_700_000_000, **args)  # type: ignore[arg-type]


def run(w: CastWriter, steps: list[tuple], end: float = 10.0, take_every: bool = False) -> bytes:
    """Play a table of (method, *args) against ``w``; return the whole file."""
    out = w.header()
    for method, *args in steps:
        getattr(w, method)(*args)
        if take_every:
            out += w.take()
    return out + w.finish(end)


def events(raw: bytes) -> list[tuple[float, str, str]]:
    return validate_cast(raw)[1]


def test_header_fields() -> None:
    head, evs = validate_cast(writer(command="uptime").header())
    assert head == {
        "version": 2,
        "width": 80,
        "height": 24,
        "timestamp": 1_700_000_000,
        "env": {"TERM": "xterm-256color", "SHELL": "/bin/bash"},
        "command": "uptime",
        "title": "alice -> root@web1",
    }
    assert evs == []


def test_unknown_env_values_are_left_out() -> None:
    head, _ = validate_cast(writer(env={"TERM": "xterm", "SHELL": None}).header())
    assert head["env"] == {"TERM": "xterm"}


CASES = [
    # name, steps, expected events (after finish at t=10)
    ("plain output", [("output", 0.5, b"hello\r\n")], [(0.5, "o", "hello\r\n")]),
    (
        "utf-8 split across reads stays whole",
        [("output", 1.0, b"caf\xc3"), ("output", 2.0, b"\xa9!")],
        [(1.0, "o", "caf"), (2.0, "o", "é!")],
    ),
    (
        "4-byte char split in three",
        [("output", 1.0, b"\xf0\x9f"), ("output", 1.5, b"\x98"), ("output", 2.0, b"\x80")],
        [(2.0, "o", "\U0001f600")],
    ),
    (
        "invalid bytes become U+FFFD",
        [("output", 1.0, b"a\xff\xfeb")],
        [(1.0, "o", "a\ufffd\ufffdb")],
    ),
    (
        "truncated char at close becomes U+FFFD",
        [("output", 1.0, b"ok\xe2\x82")],
        [(1.0, "o", "ok"), (10.0, "o", "\ufffd")],
    ),
    ("resize", [("resize", 3.0, 120, 40)], [(3.0, "r", "120x40")]),
    ("marker", [("marker", 4.0, "detached")], [(4.0, "m", "detached")]),
    (
        "times never decrease (clamped)",
        [("output", 2.0, b"a"), ("marker", 1.0, "late")],
        # A late marker in the same batch is sorted before the output.
        [(1.0, "m", "late"), (2.0, "o", "a")],
    ),
    (
        "close chunks coalesce",
        [("output", 1.0, b"ab"), ("output", 1.001, b"cd"), ("output", 1.5, b"ef")],
        [(1.0, "o", "abcd"), (1.5, "o", "ef")],
    ),
    (
        "input and output interleave by time",
        [("output", 1.0, b"$ "), ("input", 1.2, b"l"), ("output", 1.21, b"l")],
        [(1.0, "o", "$ "), (1.2, "i", "l"), (1.21, "o", "l")],
    ),
    (
        "microsecond rounding",
        [("output", 1.23456789, b"x")],
        [(1.234568, "o", "x")],
    ),
    (
        "control characters and quotes survive JSON",
        [("output", 1.0, b'\x1b[1m"q"\\\x00\t')],
        [(1.0, "o", '\x1b[1m"q"\\\x00\t')],
    ),
]


@pytest.mark.parametrize(("steps", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_events(steps: list[tuple], expected: list[tuple]) -> None:
    assert events(run(writer(), steps)) == expected


def test_clamp_across_takes() -> None:
    w = writer()
    out = w.header()
    w.output(5.0, b"later")
    out += w.take()
    w.input(4.0, b"x")  # released late by the extractor, older than what is written
    out += w.take()
    out += w.finish(6.0)
    assert events(out) == [(5.0, "o", "later"), (5.0, "i", "x")]


def test_input_off_drops_input() -> None:
    assert events(run(writer(input_mode="off"), [("input", 1.0, b"secret")])) == []


def test_take_empties_and_finish_is_final() -> None:
    w = writer()
    w.output(1.0, b"x")
    assert w.take().count(b"\n") == 1
    assert w.take() == b""
    assert w.finish(2.0) == b""
    assert w.finish(3.0) == b""


def test_take_every_step_equals_one_take() -> None:
    steps = [("output", i * 0.5, bytes([0xC3]) if i % 2 else b"\xa9") for i in range(20)]
    assert events(run(writer(), steps, take_every=True)) == events(run(writer(), steps))


def test_big_output_is_split_into_bounded_events() -> None:
    chunk = b"y" * 16384
    steps = [("output", 1.0 + i * 0.0001, chunk) for i in range(64)]
    evs = events(run(writer(), steps))
    assert "".join(e[2] for e in evs) == "y" * (16384 * 64)
    assert all(len(e[2]) <= MAX_EVENT_BYTES + 16384 for e in evs)
    assert len(evs) > 1


def test_random_binary_stays_valid() -> None:
    import random

    rnd = random.Random(4)
    steps = [("output", i * 0.1, rnd.randbytes(rnd.randint(1, 300))) for i in range(200)]
    raw = run(writer(), steps)
    evs = events(raw)
    joined = b"".join(s[2] for s in steps)
    assert "".join(e[2] for e in evs) == joined.decode("utf-8", errors="replace")


def test_v3_intervals() -> None:
    w = writer(format="v3")
    raw = run(w, [("output", 1.0, b"a"), ("resize", 1.5, 100, 30), ("output", 2.25, b"b")])
    head, evs = validate_cast(raw)
    assert head["version"] == 3
    assert head["term"] == {"cols": 80, "rows": 24, "type": "xterm-256color"}
    assert head["env"] == {"SHELL": "/bin/bash"}
    assert evs == [(1.0, "o", "a"), (1.5, "r", "100x30"), (2.25, "o", "b")]
    intervals = [json.loads(line)[0] for line in raw.decode().splitlines()[1:]]
    assert intervals == [1.0, 0.5, 0.75]


def test_asciinema_cat_reads_it(tmp_path: Path) -> None:
    w = writer()
    steps = [
        ("output", 0.1, b"$ echo h\xc3"),
        ("output", 0.2, b"\xa9llo\r\nh\xc3\xa9llo\r\n"),
        ("input", 0.15, b"echo"),
        ("resize", 0.3, 100, 30),
        ("output", 0.4, b"bin\xff\r\n"),
        ("marker", 0.5, "closed: client_exit"),
    ]
    path = tmp_path / "s.cast"
    path.write_bytes(run(w, steps))
    validate_cast(path)
    res = subprocess.run(
        [str(ASCIINEMA), "cat", str(path)], capture_output=True, timeout=30, check=True
    )
    assert b"h\xc3\xa9llo\r\nh\xc3\xa9llo" in res.stdout
    assert "bin\ufffd".encode() in res.stdout


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b'{"version": 2, "width": 80, "height": 24, "timestamp": 1}\n\n',
        b'{"version": 2, "width": 80, "height": 24, "timestamp": 1}\n[1, "o", "x"]\n',
        b'{"version": 2, "width": 80, "height": 24, "timestamp": 1}\n[2.0, "o", "x"]\n'
        b'[1.0, "o", "y"]\n',
        b'{"version": 2, "width": 80, "height": 24, "timestamp": 1}\n[1.0, "z", "x"]\n',
        b'{"version": 2, "width": 80, "timestamp": 1}\n',
        b'{"version": 2, "width": 80, "height": 24, "timestamp": 1}\n[1.0, "o", "\xff"]\n',
    ],
)
def test_validator_rejects(bad: bytes) -> None:
    with pytest.raises((AssertionError, ValueError)):
        validate_cast(bad)


@pytest.mark.parametrize("strcspn", ["native", "libc", "none", "broken"])
def test_every_ascii_byte_survives_json(strcspn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each control byte alone in a long event (escaped in C by
    recorder._escape; in Python, found by libc's strcspn, or by one memchr
    each without it, or when strcspn answers nonsense), and all of them
    together."""
    import recorder.cast as cast

    if strcspn == "native":
        if cast._native_escape is None:
            pytest.skip("recorder._escape is not built")
    else:
        monkeypatch.setattr(cast, "_native_escape", None)
    if strcspn == "none":
        monkeypatch.setattr(cast, "_strcspn", None)
    elif strcspn == "broken":
        monkeypatch.setattr(cast, "_strcspn", lambda raw, chars: 0)
    filler = b"x" * 5000
    steps = [("output", float(c), filler + bytes((c,)) + filler) for c in range(0x80)]
    steps.append(("output", 200.0, bytes(range(0x80)) * 3 + "é😀".encode()))
    evs = events(run(writer(), steps))
    assert [e[2] for e in evs] == [s[2].decode() for s in steps]


def test_times_are_written_as_repr_of_the_rounded_float() -> None:
    """v2 writes ``repr(round(t, 6))``, clamped so it never goes back: the
    text, not only the value (``CastWriter._stamp`` formats it another way).
    Ties at the sixth decimal, times below 1e-4 (``repr`` writes an
    exponent), whole seconds, late events, ints and the far future."""
    import random

    rnd = random.Random(11)
    times: list[float] = [0.0, 0.0000004, 0.0000005, 0.0000006, 0.00001, 0.00005, 0.0000999]
    times += [0.0001, 0.0078125, 1 / 128 + 1, 0.15, 0.3, 1, 2.5, 3.0000004999, 7.9999996]
    times += [rnd.uniform(0, 2) for _ in range(300)]
    times += [k * 0.15 + 0.0004 for k in range(300)]  # a typist's clock
    times += [rnd.uniform(0, 1e6) for _ in range(300)]
    times += [rnd.randrange(1 << 20) / (1 << rnd.randrange(1, 30)) for _ in range(300)]
    times += [999_999_999.9999996, 1e9, 1e9 + 0.5, 3e12]
    rnd.shuffle(times)
    last = 0.0
    want = []
    w = writer()
    w.header()
    for i, t in enumerate(times):
        r = round(float(t), 6)
        last = max(last, r)
        want.append(repr(last))
        # Every kind of line, one take() each (the clamp spans takes).
        if i % 3 == 0:
            w.output(t, b"x")
        elif i % 3 == 1:
            w.input(t, b"y")
        else:
            w.marker(t, "m")
        lines = w.take().decode().splitlines()
        assert len(lines) == 1
        assert lines[0].split(",")[0] == "[" + want[-1], (t, lines[0])


@pytest.mark.parametrize("native", [True, False])
def test_short_payloads_escape_as_json_dumps(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys and echoes (one byte, from a table; a few, in C or by a regular
    expression) are escaped as ``json.dumps`` escapes them."""
    import recorder.cast as cast
    from recorder.cast import _escape_json

    if native and cast._native_escape is None:
        pytest.skip("recorder._escape is not built")
    if not native:
        monkeypatch.setattr(cast, "_native_escape", None)

    for c in range(0x80):
        for raw in (bytes((c,)), bytes((c, c)), b"ab" + bytes((c,))):
            want = json.dumps(raw.decode(), ensure_ascii=False)[1:-1].encode()
            assert _escape_json(raw) == want, raw
    assert _escape_json("é".encode()) == "é".encode()


def test_native_escape_matches_json_dumps_on_every_block_boundary() -> None:
    """recorder._escape works 16 bytes at a time with a byte-wise tail and
    copies runs as whole 16-byte stores: each escapable byte at every offset
    of a 64-byte buffer, runs of escapes, UTF-8 around them, and text that
    needs nothing (returned as the same object)."""
    import recorder.cast as cast

    native = cast._native_escape
    if native is None:
        pytest.skip("recorder._escape is not built")
    escapable = [*range(0x20), 0x22, 0x5C]
    for n in (1, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64):
        for at in range(n):
            for c in escapable:
                one = b"x" * at + bytes((c,)) + b"x" * (n - at - 1)
                want = json.dumps(one.decode(), ensure_ascii=False)[1:-1].encode()
                assert native(one) == want, (n, at, c)
    for raw in (bytes(range(0x20)) * 5, b"\r\n" * 100, 'é\r\n😀\x1b[0m€"'.encode() * 40):
        assert native(raw) == json.dumps(raw.decode(), ensure_ascii=False)[1:-1].encode()
    text = "plain text, no escapes, ünïcode".encode() * 10
    assert native(text) is text
    with pytest.raises(TypeError):
        native(bytearray(b"x"))  # type: ignore[arg-type]

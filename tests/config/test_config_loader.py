"""Loading config files: good files, relative paths, environment overrides, and
every refusal as ``FILE: KEY: PROBLEM``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from config import ConfigError, load_config
from config.models import DEFAULT_CIPHERS, InputRecording

Write = Callable[..., Path]


def good_toml(keys, *, target_extra: str = "", identity: str | None = None) -> str:
    return f"""
[gateway]
listen = "127.0.0.1:2200"
detach_timeout = "1h30m"
idle_timeout = 0

[recording]
input = "on"

[[users]]
name = "alice"
keys = ["{keys.alice}"]
roles = ["admin"]

[[users]]
name = "bob"
keys = ["{keys.bob}"]
roles = ["dev"]

[[targets]]
name = "web1"
host = "10.0.0.5"
host_key = "{keys.host_key}"
identity = "{identity or keys.identity}"
logins = ["deploy", "root"]
{target_extra}

[[policies]]
users = ["alice"]
targets = ["*"]

[[policies]]
roles = ["dev"]
targets = ["web*"]
logins = ["deploy"]
"""


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = caught.value.problems
    assert str(caught.value) == "\n".join(problems)
    return problems


def only_problem(path: Path) -> str:
    problems = problems_of(path)
    assert len(problems) == 1, problems
    return problems[0]


# -- good files -------------------------------------------------------------------------


def test_good_file(keys, write_config: Write) -> None:
    cfg = load_config(write_config(good_toml(keys)))
    assert cfg.gateway.listen == "127.0.0.1:2200"
    assert (cfg.gateway.listen_host, cfg.gateway.listen_port) == ("127.0.0.1", 2200)
    assert cfg.gateway.detach_timeout == 5400.0
    assert cfg.gateway.idle_timeout == 0.0
    assert cfg.recording.input is InputRecording.ON
    assert [u.name for u in cfg.users] == ["alice", "bob"]
    assert cfg.user("alice") is not None and cfg.user("alice").is_admin
    assert cfg.user("bob") is not None and not cfg.user("bob").is_admin
    assert cfg.user("nobody") is None
    web1 = cfg.target("web1")
    assert web1 is not None and web1.port == 22 and web1.identity == keys.identity
    assert cfg.target("web9") is None


def test_defaults_of_a_minimal_file(write_config: Write) -> None:
    cfg = load_config(write_config(""))
    assert cfg.gateway.listen == "127.0.0.1:2222"
    assert cfg.gateway.detach_timeout == 900.0
    assert cfg.gateway.max_channels_per_target == 10
    assert cfg.gateway.ciphers == DEFAULT_CIPHERS
    assert cfg.recording.input is InputRecording.REDACTED
    assert (cfg.users, cfg.targets, cfg.policies) == ([], [], [])


def test_embedded_default() -> None:
    cfg = load_config(None)
    assert cfg.gateway.listen == "127.0.0.1:2222"
    assert cfg.gateway.host_keys == [Path("var/ssh_host_ed25519_key")]
    assert cfg.gateway.data_dir == Path("var")


def test_known_hosts_instead_of_host_key(keys, write_config: Write) -> None:
    text = good_toml(keys).replace(
        f'host_key = "{keys.host_key}"', f'known_hosts = "{keys.known_hosts}"'
    )
    cfg = load_config(write_config(text))
    web1 = cfg.target("web1")
    assert web1 is not None and web1.known_hosts == keys.known_hosts and web1.host_key is None


def test_relative_paths_are_relative_to_the_config_file(
    keys,
    tmp_path: Path,
    write_config: Write,
) -> None:
    conf_dir = tmp_path / "etc" / "shellgate"
    (conf_dir / "keys").mkdir(parents=True)
    (conf_dir / "keys" / "web1").write_bytes(keys.identity.read_bytes())
    (conf_dir / "known_hosts").write_text(keys.known_hosts.read_text())
    (conf_dir / "alice.pub").write_text(keys.carol + "\n")
    text = good_toml(keys, identity="keys/web1").replace(
        f'host_key = "{keys.host_key}"', 'known_hosts = "known_hosts"'
    )
    text = text.replace("[[users]]", '[[users]]\nauthorized_keys_file = "alice.pub"', 1)
    text = text.replace(
        "idle_timeout = 0", 'idle_timeout = 0\nhost_keys = ["var/hk"]\ndata_dir = "data"'
    )
    path = write_config(text, "etc/shellgate/shellgate.toml")
    cfg = load_config(path)
    web1 = cfg.target("web1")
    assert web1 is not None
    assert web1.identity == conf_dir / "keys" / "web1"
    assert web1.known_hosts == conf_dir / "known_hosts"
    alice = cfg.user("alice")
    assert alice is not None and alice.authorized_keys_file == conf_dir / "alice.pub"
    assert cfg.gateway.host_keys == [conf_dir / "var" / "hk"]
    assert cfg.gateway.data_dir == conf_dir / "data"


def test_default_data_dir_and_host_key_follow_the_file_not_the_cwd(
    write_config: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon started by an init system (cwd /) and an admin's query
    command (cwd ~) read one config: both must find the same store."""
    path = write_config('[gateway]\nlisten = "127.0.0.1:2200"\n', "etc/sg/shellgate.toml")
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path)
    conf_dir = tmp_path / "etc" / "sg"
    assert cfg.gateway.data_dir == conf_dir / "var"
    assert cfg.gateway.host_keys == [conf_dir / "var" / "ssh_host_ed25519_key"]


@pytest.mark.parametrize("data_dir", ["/srv/shellgate", "data"])
def test_host_key_defaults_into_the_data_dir(
    write_config: Write, tmp_path: Path, data_dir: str
) -> None:
    cfg = load_config(write_config(f'[gateway]\ndata_dir = "{data_dir}"\n', "c/sg.toml"))
    expected = Path(data_dir) if data_dir.startswith("/") else tmp_path / "c" / data_dir
    assert cfg.gateway.data_dir == expected
    assert cfg.gateway.host_keys == [expected / "ssh_host_ed25519_key"]


def test_host_key_from_the_env_data_dir(
    write_config: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHELLGATE_GATEWAY__DATA_DIR", "/srv/env")
    cfg = load_config(write_config('[gateway]\ndata_dir = "data"\n'))
    assert cfg.gateway.data_dir == Path("/srv/env")
    assert cfg.gateway.host_keys == [Path("/srv/env/ssh_host_ed25519_key")]


def test_absolute_paths_are_kept(keys, write_config: Write) -> None:
    cfg = load_config(write_config(good_toml(keys)))
    assert cfg.target("web1").identity == keys.identity  # type: ignore[union-attr]


# -- environment overrides ----------------------------------------------------------------


def test_env_overrides_listen(keys, write_config: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELLGATE_GATEWAY__LISTEN", "127.0.0.1:2299")
    cfg = load_config(write_config(good_toml(keys)))
    assert cfg.gateway.listen_port == 2299
    # The rest of [gateway] still comes from the file.
    assert cfg.gateway.detach_timeout == 5400.0


def test_env_overrides_the_embedded_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELLGATE_GATEWAY__LISTEN", "0.0.0.0:22")
    monkeypatch.setenv("SHELLGATE_GATEWAY__DETACH_TIMEOUT", "5m")
    cfg = load_config(None)
    assert cfg.gateway.listen == "0.0.0.0:22"
    assert cfg.gateway.detach_timeout == 300.0


def test_bad_env_value_is_refused(
    keys,
    write_config: Write,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHELLGATE_GATEWAY__LISTEN", "nowhere")
    path = write_config(good_toml(keys))
    assert only_problem(path) == f"{path}: gateway.listen: expected HOST:PORT, got 'nowhere'"


# -- refusals: one FILE: KEY: PROBLEM line each -------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert only_problem(path) == f"{path}: cannot read: No such file or directory"


def test_malformed_toml(write_config: Write) -> None:
    path = write_config("[gateway\nlisten = 1\n")
    assert only_problem(path).startswith(f"{path}: TOML syntax: ")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[gateway]\nlog_level = "\xe9"\n')
    assert only_problem(path) == f"{path}: not UTF-8 text"


@pytest.mark.parametrize("listen", ["nowhere", "127.0.0.1", ":2222", "127.0.0.1:http", "h:70000"])
def test_bad_listen(write_config: Write, listen: str) -> None:
    path = write_config(f'[gateway]\nlisten = "{listen}"\n')
    assert only_problem(path) == f"{path}: gateway.listen: expected HOST:PORT, got {listen!r}"


def test_bad_duration(write_config: Write) -> None:
    path = write_config('[gateway]\ndetach_timeout = "15x"\n')
    assert only_problem(path) == (
        f"{path}: gateway.detach_timeout: not a duration: '15x' "
        '(use seconds or units s m h d, e.g. "1h30m")'
    )


def test_negative_duration(write_config: Write) -> None:
    path = write_config("[recording]\nflush_interval = -1\n")
    assert only_problem(path) == f"{path}: recording.flush_interval: a duration cannot be negative"


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("bogus = 1\n", "bogus"),
        ("[gateway]\nbogus = 1\n", "gateway.bogus"),
        ("[recording]\nlisten = 'x'\n", "recording.listen"),
        ("[[policies]]\nusers = ['x']\ntargets = ['y']\nbogus = 1\n", "policies[0].bogus"),
    ],
)
def test_unknown_key(write_config: Write, toml: str, key: str) -> None:
    path = write_config(toml)
    assert f"{path}: {key}: unknown key" in problems_of(path)


def test_bad_enum(write_config: Write) -> None:
    path = write_config('[recording]\ninput = "sometimes"\n')
    problem = only_problem(path)
    assert problem.startswith(f"{path}: recording.input: ")
    assert "'off', 'on' or 'redacted'" in problem


def test_bad_user_name(keys, write_config: Write) -> None:
    path = write_config(f'[[users]]\nname = "a@b"\nkeys = ["{keys.alice}"]\n')
    assert only_problem(path) == (
        f"{path}: users[0].name: user name 'a@b' must be non-empty, printable, "
        "without @ : / or spaces"
    )


def test_missing_required_key(write_config: Write) -> None:
    path = write_config(
        '[[targets]]\nname = "web1"\nhost = "h"\nhost_key = "x"\nlogins = ["root"]\n'
    )
    assert f"{path}: targets[0].identity: Field required" in problems_of(path)


def test_missing_host_key_and_known_hosts(keys, write_config: Write) -> None:
    text = good_toml(keys).replace(f'host_key = "{keys.host_key}"', "")
    path = write_config(text)
    assert only_problem(path) == (
        f"{path}: targets[0]: needs host_key or known_hosts (unknown host keys are refused)"
    )


def test_empty_logins(keys, write_config: Write) -> None:
    path = write_config(good_toml(keys).replace('logins = ["deploy", "root"]', "logins = []"))
    assert only_problem(path).startswith(f"{path}: targets[0].logins: ")


def test_unreadable_identity(keys, write_config: Write, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-key"
    path = write_config(good_toml(keys, identity=str(missing)))
    assert only_problem(path) == (
        f"{path}: targets[0].identity: cannot read {missing}: No such file or directory"
    )


def test_identity_not_a_private_key(keys, write_config: Write, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_text("not a key\n")
    path = write_config(good_toml(keys, identity=str(junk)))
    assert only_problem(path).startswith(f"{path}: targets[0].identity: not a private key: ")


def test_unreadable_known_hosts(keys, write_config: Write, tmp_path: Path) -> None:
    missing = tmp_path / "no-known-hosts"
    text = good_toml(keys).replace(f'host_key = "{keys.host_key}"', f'known_hosts = "{missing}"')
    path = write_config(text)
    assert only_problem(path) == (
        f"{path}: targets[0].known_hosts: cannot read {missing}: No such file or directory"
    )


def test_bad_host_key(keys, write_config: Write) -> None:
    path = write_config(good_toml(keys).replace(keys.host_key, "ssh-ed25519 AAAAnotbase64"))
    assert only_problem(path).startswith(f"{path}: targets[0].host_key: not a public key: ")


def test_bad_user_key(keys, write_config: Write) -> None:
    path = write_config(good_toml(keys).replace(keys.bob, "ssh-ed25519 garbage"))
    assert only_problem(path).startswith(f"{path}: users[1].keys[0]: not a public key: ")


def test_user_without_keys(write_config: Write) -> None:
    path = write_config('[[users]]\nname = "dave"\n')
    assert only_problem(path) == (
        f"{path}: users[0]: user 'dave' has no keys and no authorized_keys_file"
    )


def test_unreadable_authorized_keys_file(write_config: Write, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pub"
    path = write_config(f'[[users]]\nname = "dave"\nauthorized_keys_file = "{missing}"\n')
    assert only_problem(path) == (
        f"{path}: users[0].authorized_keys_file: cannot read {missing}: No such file or directory"
    )


def test_bad_user_ca_key(write_config: Write) -> None:
    path = write_config('[gateway]\nuser_ca_keys = ["ssh-ed25519 nope"]\n')
    assert only_problem(path).startswith(f"{path}: gateway.user_ca_keys[0]: not a public key: ")


def test_duplicate_key_across_users(keys, write_config: Write) -> None:
    path = write_config(good_toml(keys).replace(keys.bob, keys.alice))
    assert only_problem(path) == (
        f"{path}: users[1].keys[0]: key of 'bob' is already the key of 'alice'"
    )


def test_same_key_twice_for_one_user_is_fine(keys, write_config: Write) -> None:
    text = good_toml(keys).replace(
        f'keys = ["{keys.alice}"]', f'keys = ["{keys.alice}", "{keys.alice}"]'
    )
    assert load_config(write_config(text)).user("alice") is not None


def test_duplicate_key_via_authorized_keys_file(keys, write_config: Write, tmp_path: Path) -> None:
    ak = tmp_path / "bob.pub"
    ak.write_text(f"# bob's keys\n\n{keys.alice}\n")
    text = good_toml(keys).replace(f'keys = ["{keys.bob}"]', f'authorized_keys_file = "{ak}"')
    problems = problems_of(write_config(text))
    assert len(problems) == 1 and "key of 'bob' is already the key of 'alice'" in problems[0]


def test_bad_line_in_authorized_keys_file_names_the_file(
    write_config: Write, tmp_path: Path
) -> None:
    ak = tmp_path / "dave.pub"
    ak.write_text("ssh-ed25519 garbage\n")
    path = write_config(f'[[users]]\nname = "dave"\nauthorized_keys_file = "{ak}"\n')
    assert only_problem(path).startswith(f"{path}: users[0].authorized_keys_file")


def test_keys_with_options_are_not_confused(keys, write_config: Write) -> None:
    text = good_toml(keys).replace(f'"{keys.alice}"', f'"restrict {keys.alice}"')
    text = text.replace(f'"{keys.bob}"', f'"restrict {keys.bob}"')
    assert load_config(write_config(text)).user("bob") is not None


# -- cross checks --------------------------------------------------------------------------


def test_several_cross_check_problems_are_all_reported(keys, write_config: Write) -> None:
    text = good_toml(keys).replace('users = ["alice"]', 'users = ["zoe"]')
    text = text.replace('targets = ["web*"]', 'targets = ["db9"]')
    path = write_config(text)
    assert problems_of(path) == [
        f"{path}: policies[0].users: unknown user 'zoe'",
        f"{path}: policies[1].targets: unknown target 'db9'",
    ]


DUP_TARGET = (
    '[[targets]]\nname = "web1"\nhost = "h2"\nhost_key = "{hk}"\n'
    'identity = "{ident}"\nlogins = ["root"]\n\n[[policies]]'
)

CROSS = [
    ('name = "bob"', 'name = "alice"', "users: duplicate user name 'alice'"),
    ("[[policies]]", DUP_TARGET, "targets: duplicate target name 'web1'"),
    ('users = ["alice"]', 'users = ["zoe"]', "policies[0].users: unknown user 'zoe'"),
    ('targets = ["web*"]', 'targets = ["web9"]', "policies[1].targets: unknown target 'web9'"),
    ('targets = ["web*"]', 'targets = ["db*"]', "policies[1].targets: 'db*' matches no target"),
    (
        'roles = ["dev"]\ntargets',
        'roles = ["ops"]\ntargets',
        "policies[1].roles: no user has role 'ops'",
    ),
]


@pytest.mark.parametrize(("old", "new", "problem"), CROSS, ids=[c[2] for c in CROSS])
def test_single_cross_check_problem(
    keys,
    write_config: Write,
    old: str,
    new: str,
    problem: str,
) -> None:
    new = new.format(hk=keys.host_key, ident=keys.identity)
    path = write_config(good_toml(keys).replace(old, new, 1))
    assert only_problem(path) == f"{path}: {problem}"


def test_policy_needs_users_or_roles(keys, write_config: Write) -> None:
    path = write_config(good_toml(keys).replace('users = ["alice"]\n', "", 1))
    assert only_problem(path) == f"{path}: policies[0]: a policy needs users or roles"


def test_field_error_hides_cross_check_errors(keys, write_config: Write) -> None:
    """pydantic skips model-level checks once a field fails: the unknown user is
    not reported next to the bad listen. Accepted; fixing the listen shows it."""
    text = good_toml(keys).replace('users = ["alice"]', 'users = ["zoe"]')
    bad = text.replace('listen = "127.0.0.1:2200"', 'listen = "nowhere"')
    path = write_config(bad)
    assert problems_of(path) == [f"{path}: gateway.listen: expected HOST:PORT, got 'nowhere'"]
    path = write_config(text)
    assert problems_of(path)[0].endswith("policies[0].users: unknown user 'zoe'")


def test_file_problems_are_all_reported_together(keys, write_config: Write, tmp_path: Path) -> None:
    missing = tmp_path / "missing-identity"
    text = good_toml(keys, identity=str(missing)).replace(keys.bob, keys.alice)
    path = write_config(text)
    problems = problems_of(path)
    assert len(problems) == 2
    assert all(p.startswith(f"{path}: ") for p in problems)
    assert any("users[1].keys[0]: key of 'bob'" in p for p in problems)
    assert any("targets[0].identity: cannot read" in p for p in problems)

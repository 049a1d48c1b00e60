"""Who may log in where as whom: ``GatewayConfig.allows`` as a table.

Policies name users or roles (globs allowed) x targets (names or globs) x
logins (default any); a target's own ``logins`` bound every policy; anything
no policy allows is denied.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from config import GatewayConfig, parse_config

USERS = [
    {"name": "alice", "keys": [], "roles": ["admin"]},
    {"name": "bob", "keys": [], "roles": ["dev"]},
    {"name": "carol", "keys": [], "roles": []},
    {"name": "dan", "keys": [], "roles": ["dev-lead"]},
]

TARGETS = [
    ("web1", ["deploy", "root"]),
    ("web2", ["deploy"]),
    ("db1", ["postgres", "root"]),
]

POLICIES = [
    {"users": ["alice"], "targets": ["*"]},  # any login the target has
    {"roles": ["dev"], "targets": ["web*"], "logins": ["deploy"]},
    {"users": ["car*"], "targets": ["db1"], "logins": ["postgres"]},
    {"roles": ["dev-*"], "targets": ["web[12]", "db1"], "logins": ["root"]},
]


def build(keys, policies: list[dict]) -> GatewayConfig:
    """The config straight from a mapping (parse_config), each user with a real key."""
    lines = [keys.alice, keys.bob, keys.carol]
    users = [dict(u, keys=[lines[i]]) if i < 3 else dict(u, keys=[]) for i, u in enumerate(USERS)]
    users[3]["authorized_keys_file"] = str(Path("/dev/null"))
    targets = [
        {
            "name": name,
            "host": "10.0.0.5",
            "host_key": keys.host_key,
            "identity": str(keys.identity),
            "logins": logins,
        }
        for name, logins in TARGETS
    ]
    return parse_config({"users": users, "targets": targets, "policies": policies})


ALLOWS = [
    # user, target, login, allowed
    ("alice", "web1", "root", True),
    ("alice", "web1", "deploy", True),
    ("alice", "db1", "postgres", True),
    ("alice", "web1", "postgres", False),  # not one of web1's logins
    ("alice", "web2", "root", False),  # web2 has no root login, policy "*" or not
    ("bob", "web1", "deploy", True),
    ("bob", "web2", "deploy", True),
    ("bob", "web1", "root", False),  # policy limits logins to deploy
    ("bob", "db1", "postgres", False),  # db1 does not match web*
    ("carol", "db1", "postgres", True),  # user glob car*
    ("carol", "db1", "root", False),
    ("carol", "web1", "deploy", False),
    ("dan", "web1", "root", True),  # role glob dev-*, target glob web[12]
    ("dan", "db1", "root", True),
    ("dan", "web1", "deploy", False),  # role dev-lead is not role dev
    ("dan", "web2", "root", False),  # bounded by web2's logins
]


@pytest.mark.parametrize(("user", "target", "login", "allowed"), ALLOWS)
def test_allows(keys, user: str, target: str, login: str, allowed: bool) -> None:
    cfg = build(keys, POLICIES)
    u, t = cfg.user(user), cfg.target(target)
    assert u is not None and t is not None
    assert cfg.allows(u, t, login) is allowed


def test_no_policies_deny_everything(keys) -> None:
    cfg = build(keys, [])
    for user, target, login, _ in ALLOWS:
        u, t = cfg.user(user), cfg.target(target)
        assert u is not None and t is not None
        assert not cfg.allows(u, t, login)


def test_glob_characters_in_a_login_are_not_patterns(keys) -> None:
    """A requested login is matched against patterns, never used as one."""
    cfg = build(keys, [{"users": ["bob"], "targets": ["web1"], "logins": ["deploy"]}])
    u, t = cfg.user("bob"), cfg.target("web1")
    assert u is not None and t is not None
    assert not cfg.allows(u, t, "*")
    assert not cfg.allows(u, t, "dep*")

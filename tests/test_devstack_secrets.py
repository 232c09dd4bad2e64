"""The private redis-server that ``loa up`` and the tests run (``devstack/services.py``) asks
for a password kept 0600 beside its data, reused by a restart on the same directory and never
on a command line; what it writes (config, log, dump, append-only files) is its user's alone;
``loa-up.json`` shows its URL without the password (``devstack/spawn.py``). Every secret Loa
makes can be given after an option on a command line (``common/secretfile.py``)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import redis

from common.secretfile import new_secret
from devstack.services import RedisServer
from devstack.spawn import tighten, without_password


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_client_without_the_password_is_refused_and_one_with_it_served(redis_server):
    anonymous = f"redis://{redis_server.host}:{redis_server.port}/0"
    assert redis_server.public_url == anonymous
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(anonymous).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(f"redis://:wrong@{redis_server.host}:{redis_server.port}/0").ping()
    assert redis_server.password in redis_server.url
    assert redis.Redis.from_url(redis_server.url).ping()


def test_the_password_is_kept_per_directory_and_survives_a_restart(redis_server, tmp_path):
    client = redis.Redis.from_url(redis_server.url)
    client.set("k", "v")
    password = redis_server.password
    assert redis_server.password_path.read_text().strip() == password
    redis_server.stop()
    again = RedisServer(redis_server.directory, redis_server.port)  # a new loa up, same var/
    again.start()
    try:
        assert again.password == password
        assert redis.Redis.from_url(again.url).get("k") == b"v"
    finally:
        again.stop()
    assert RedisServer(tmp_path / "other").password != password


def test_what_redis_keeps_is_private_and_its_password_on_no_command_line(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    client.set("k", "v")
    client.save()  # the RDB dump, as "save 300 1" or a shutdown writes it
    d = redis_server.directory
    assert {p.name for p in d.iterdir()} >= {"password", "redis-server.conf", "redis-server.log",
                                              "dump.rdb", "appendonlydir"}
    assert mode(d) == 0o700
    for path in d.rglob("*"):
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path
    assert redis_server.proc is not None
    cmdline = Path(f"/proc/{redis_server.proc.pid}/cmdline").read_bytes().decode()
    assert redis_server.password not in cmdline
    assert redis_server.password not in (d / "redis-server.log").read_text()


def test_tighten_makes_an_old_var_private_without_following_links(tmp_path):
    var, outside = tmp_path / "var", tmp_path / "outside"
    (var / "logs").mkdir(parents=True, mode=0o755)
    outside.write_text("not ours to change")
    outside.chmod(0o644)
    (var / "logs" / "streamer.log").write_text("old")
    (var / "logs" / "streamer.log").chmod(0o644)
    (var / "link").symlink_to(outside)
    var.chmod(0o755)
    tighten(var)
    assert (mode(var), mode(var / "logs"), mode(var / "logs" / "streamer.log")) == (
        0o700, 0o700, 0o600)
    assert mode(outside) == 0o644


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cret@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://loa:s3cret@db.example:6379/2", "redis://loa@db.example:6379/2"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("", ""),
])
def test_a_redis_url_is_shown_without_its_password(url, shown):
    assert without_password(url) == shown



def test_no_secret_starts_with_a_dash_that_argparse_would_take_for_an_option():
    """``loa loadtest --token -Xy…`` is refused by argparse ("expected one argument"); with
    ``secrets.token_urlsafe`` one token in 64 began so. 4,000 draws would hold about 60."""
    drawn = [new_secret(32) for _ in range(4000)]
    assert not [s for s in drawn if s.startswith("-")]
    assert len(set(drawn)) == len(drawn) and {len(s) for s in drawn} == {43}
    assert {c for s in drawn for c in s[1:]} >= {"-", "_"}  # still the whole URL-safe alphabet

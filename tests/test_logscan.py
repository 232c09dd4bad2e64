"""The end-of-session check that no log holds a secret (``tests/harness/logscan.py``) finds
what it must, and only that."""

from __future__ import annotations

import json
from pathlib import Path

from tests.harness.keys import TEST_KEY
from tests.harness.logscan import PLANTED, leaks


def test_a_password_token_admin_password_or_private_key_in_a_log_is_found(tmp_path: Path):
    (tmp_path / PLANTED).touch()  # the session's own scan leaves these alone
    (tmp_path / "var" / "logs").mkdir(parents=True)
    (tmp_path / "spk-a.password").write_text("Xq3-very-secret-pw\n")
    (tmp_path / "var" / "tokens").mkdir()
    (tmp_path / "var" / "tokens" / "spk-a.token").write_text("AQAAAAAtokenbase64==\n")
    (tmp_path / "var" / "admin-credentials.json").write_text(
        json.dumps({"user": "admin", "password": "correct-horse-battery"}))
    (tmp_path / "var" / "signing-key.pem").write_bytes(TEST_KEY.to_pem())
    clean = tmp_path / "var" / "logs" / "relay.log"
    clean.write_text("relay started; token renewed; password file read\n")
    assert list(leaks(tmp_path, skip_planted=False)) == []
    planted = {
        tmp_path / "speaker.stderr": "login with Xq3-very-secret-pw",
        tmp_path / "var" / "logs" / "streamer.log": "token AQAAAAAtokenbase64== refused",
        tmp_path / "play.jsonl": '{"admin": "correct-horse-battery"}',
        tmp_path / "var" / "logs" / "up.txt": TEST_KEY.to_pem().decode(),
    }
    for path, text in planted.items():
        path.write_text(text)
    assert {p for p, _ in leaks(tmp_path, skip_planted=False)} == set(planted)
    assert list(leaks(tmp_path)) == []

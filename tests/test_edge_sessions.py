"""Signed-out page sessions (edge/sessions.py): refused until their token expires, on every worker and after a
restart, in a file that never grows, and never forgotten to make room."""

import os

from edge.sessions import ENTRIES_PER_BUCKET, SignedOutSessions

NOW = 1_700_000_000.0


def test_a_signed_out_token_is_refused_until_it_expires(tmp_path):
    sessions = SignedOutSessions(tmp_path / "sessions.bin", buckets=64)
    assert not sessions.signed_out("a" * 32, NOW)
    assert sessions.sign_out("a" * 32, NOW + 3600, NOW)
    assert sessions.signed_out("a" * 32, NOW) and sessions.signed_out("a" * 32, NOW + 3599)
    assert not sessions.signed_out("a" * 32, NOW + 3600)  # expired: the token is refused as such anyway
    assert not sessions.signed_out("b" * 32, NOW)
    assert sessions.sign_out("a" * 32, NOW + 60, NOW)  # signed out twice: the later expiry stands
    assert sessions.signed_out("a" * 32, NOW + 3599)


def test_every_worker_sees_a_sign_out_and_it_outlives_a_restart(tmp_path):
    path = tmp_path / "sessions.bin"
    first, second = SignedOutSessions(path, buckets=64), SignedOutSessions(path, buckets=64)
    assert first.sign_out("token-1", NOW + 3600, NOW)
    assert second.signed_out("token-1", NOW)
    first.close()
    second.close()
    assert SignedOutSessions(path, buckets=64).signed_out("token-1", NOW + 10)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_a_full_bucket_refuses_a_sign_out_rather_than_forget_one_then_reuses_expired_entries(tmp_path):
    sessions = SignedOutSessions(tmp_path / "sessions.bin", buckets=1)  # one bucket: every id shares it
    size = os.path.getsize(tmp_path / "sessions.bin")
    ids = [f"token-{number}" for number in range(ENTRIES_PER_BUCKET)]
    for number, token_id in enumerate(ids):
        assert sessions.sign_out(token_id, NOW + 100 + number, NOW)
    assert not sessions.sign_out("one-more", NOW + 3600, NOW)
    assert all(sessions.signed_out(token_id, NOW) for token_id in ids) and not sessions.signed_out("one-more", NOW)
    # Once the first has expired its entry takes the next sign-out; the others stay signed out.
    assert sessions.sign_out("one-more", NOW + 3600, NOW + 100)
    assert sessions.signed_out("one-more", NOW + 100)
    assert all(sessions.signed_out(token_id, NOW + 100) for token_id in ids[1:])
    assert os.path.getsize(tmp_path / "sessions.bin") == size

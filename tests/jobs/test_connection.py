"""jobs.connection: the settings every Redis client is built from, and the URL form logs may show."""

import pytest

from jobs.connection import client_options, describe, redact_url, sentinel_addresses, sentinel_list, url_with_ca
from settings import Settings, SettingsError


@pytest.mark.parametrize("url, shown", [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:s3cret@db.example:6379/0", "redis://:***@db.example:6379/0"),
    ("rediss://alice:s3cret@db.example/2", "rediss://alice:***@db.example/2"),
    ("redis://alice:p%40ss@[::1]:6380/0", "redis://alice:***@[::1]:6380/0"),
])
def test_a_redacted_url_keeps_everything_but_the_password(url, shown):
    assert redact_url(url) == shown


def test_settings_repr_and_description_hide_both_passwords():
    settings = Settings(redis_url="redis://alice:s3cret@h:6379/0", redis_sentinels=("198.18.0.1:26379",),
                        redis_sentinel_master="primary", redis_sentinel_password="sentinel-s3cret")
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in describe(settings)
    assert "primary" in describe(settings) and "198.18.0.1:26379" in describe(settings)


def test_a_tls_url_gets_the_ca_file_and_an_acl_user():
    settings = Settings(redis_url="rediss://alice:s3cret@h:6380/3", redis_ca_file="/etc/ca.pem")
    assert client_options(settings) == {"username": "alice", "password": "s3cret", "db": 3, "ssl": True,
                                        "ssl_ca_certs": "/etc/ca.pem"}
    assert url_with_ca(settings).endswith("/3?ssl_ca_certs=%2Fetc%2Fca.pem")


def test_a_plain_url_ignores_the_ca_file():
    settings = Settings(redis_url="redis://h:6379/0", redis_ca_file="/etc/ca.pem")
    assert url_with_ca(settings) == "redis://h:6379/0"


@pytest.mark.parametrize("env, variable", [
    ({"REDIS_SENTINELS": "198.18.0.1:26379"}, "REDIS_SENTINEL_MASTER"),
    ({"REDIS_SENTINELS": "198.18.0.1", "REDIS_SENTINEL_MASTER": "primary"}, "REDIS_SENTINELS"),
])
def test_bad_sentinel_settings_name_the_variable(env, variable):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env(env)


def test_sentinels_come_parsed_from_settings_and_are_written_back_as_given():
    settings = Settings.from_env({"REDIS_URL": "redis://:pw@h/0", "REDIS_SENTINEL_MASTER": "primary",
                                  "REDIS_SENTINELS": "198.18.0.1:26379, [2001:db8::7]:26380"})
    assert sentinel_addresses(settings) == [("198.18.0.1", 26379), ("2001:db8::7", 26380)]
    assert sentinel_list(settings) == "198.18.0.1:26379,[2001:db8::7]:26380"
    assert "Sentinels 198.18.0.1:26379,[2001:db8::7]:26380" in describe(settings)

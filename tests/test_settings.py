import dataclasses
import ipaddress
import os
import re
import stat
import threading
from urllib.parse import urlsplit

import pytest

from settings import ROOT, ApiKey, Settings, SettingsError, key_digest


def test_defaults_match_the_protocol():
    s = Settings()
    assert (s.max_number, s.soft_max_number, s.soft_timeout_s, s.hard_timeout_s) == (1_000_000, 1000, 10, 60)
    assert (s.result_ttl_s, s.failure_ttl_s, s.max_frame_bytes, s.server_port) == (3600, 3600, 65536, 8888)


def test_from_env_reads_upper_case_names():
    s = Settings.from_env({"MAX_NUMBER": "50", "SOFT_MAX_NUMBER": "7", "ALLOWED_ORIGINS": "https://a.example, https://b.example/",
                           "WEBSOCKET_COMPRESSION": "yes", "SWEEP_INTERVAL_S": "0.5"})
    assert s.max_number == 50 and s.soft_max_number == 7
    assert s.allowed_origins == frozenset({"https://a.example", "https://b.example"})
    assert s.websocket_compression is True and s.sweep_interval_s == 0.5


def test_from_env_ignores_honchos_port():
    assert Settings.from_env({"PORT": "5000"}).server_port == 8888


@pytest.mark.parametrize("name, value", [("MAX_NUMBER", "lots"), ("SOFT_TIMEOUT_S", "-1"),
                                         ("WEBSOCKET_COMPRESSION", "maybe"), ("SWEEP_INTERVAL_S", "0")])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_a_kubernetes_service_link_in_a_port_setting_is_explained():
    """Kubernetes puts RQ_DASHBOARD_PORT=tcp://... in every pod when a Service is named rq-dashboard."""
    with pytest.raises(SettingsError, match=r"RQ_DASHBOARD_PORT=.*Service named rq-dashboard.*enableServiceLinks"):
        Settings.from_env({"RQ_DASHBOARD_PORT": "tcp://198.18.0.5:9181"})


def test_soft_limit_must_not_exceed_max_number():
    with pytest.raises(SettingsError, match="SOFT_MAX_NUMBER"):
        Settings(max_number=10, soft_max_number=11)


def test_soft_batches_hold_at_least_one_request():
    with pytest.raises(SettingsError, match="SOFT_BATCH_SIZE"):
        Settings(soft_batch_size=0)


# --- list settings: parsed once, here, into the values the service uses ------------------

def test_list_settings_are_held_parsed():
    s = Settings.from_env({"REDIS_URL": "redis://:pw@h:6379/0", "REDIS_SENTINELS": "198.18.0.1:26379, [::1]:26380",
                           "REDIS_SENTINEL_MASTER": "factorial", "TRUSTED_PROXIES": "127.0.0.1, 198.18.5.0/24",
                           "API_KEYS": "alice:k1, bob:k:2",
                           "ALLOWED_ORIGINS": "HTTPS://App.Example/, http://b.example:8080"})
    assert s.redis_sentinels == (("198.18.0.1", 26379), ("::1", 26380))
    assert s.trusted_proxies == (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("198.18.5.0/24"))
    assert s.api_keys == (ApiKey("alice", key_digest("k1")), ApiKey("bob", key_digest("k:2")))
    assert s.allowed_origins == frozenset({"https://app.example", "http://b.example:8080"})


def test_parsed_values_given_directly_are_kept():
    parsed = Settings(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),), api_keys=(ApiKey.of("a", "k"),),
                      redis_sentinels=(("h", 1),), redis_sentinel_master="m")
    assert Settings(trusted_proxies=("10.0.0.0/8",), api_keys=("a:k",), redis_sentinels=("h:1",),
                    redis_sentinel_master="m") == parsed


@pytest.mark.parametrize("env, named", [
    ({"REDIS_SENTINELS": "198.18.0.1", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
    ({"REDIS_SENTINELS": "198.18.0.1:99999", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
    ({"REDIS_SENTINELS": "198.18.0.1:26379"}, "REDIS_SENTINEL_MASTER"),
    ({"TRUSTED_PROXIES": "10.0.0.5/8"}, "TRUSTED_PROXIES"),
    ({"TRUSTED_PROXIES": "proxy.example"}, "TRUSTED_PROXIES"),
    ({"API_KEYS": "alice"}, "API_KEYS: entry 1"),
    ({"API_KEYS": "alice:k,:k2"}, "API_KEYS: entry 2"),
    ({"API_KEYS": "alice:k,bob:k"}, "API_KEYS: entry 2 repeats"),
    ({"API_KEYS_REQUIRED": "true"}, "API_KEYS_REQUIRED"),
    ({"ALLOWED_ORIGINS": "app.example.com"}, "ALLOWED_ORIGINS"),
    ({"ALLOWED_ORIGINS": "https://app.example.com/page"}, "ALLOWED_ORIGINS"),
    ({"REDIS_LOCAL_PORT": "0"}, "REDIS_LOCAL_PORT"),
    ({"REDIS_LOCAL_PORT": "70000"}, "REDIS_LOCAL_PORT"),
    ({"REDIS_LOCAL_PORT": "6380", "REDIS_URL": "redis://127.0.0.1:6379/0"}, "REDIS_LOCAL_PORT"),
    ({"RQ_DASHBOARD_PORT": "70000"}, "RQ_DASHBOARD_PORT"),
    ({"RQ_DASHBOARD_PORT": "x"}, "RQ_DASHBOARD_PORT"),
    ({"RQ_DASHBOARD_USERNAME": "admin"}, "RQ_DASHBOARD_PASSWORD"),
])
def test_each_bad_value_is_a_start_up_error_naming_it(env, named, tmp_path):
    with pytest.raises(SettingsError, match=named):
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0", **env} if "REDIS_LOCAL_PORT" not in env else
                          {"REDIS_PASSWORD_FILE": str(tmp_path / "pw"), **env})


def test_an_api_keys_error_never_shows_the_key():
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0", "API_KEYS": "alice:s3cret-k,bob:s3cret-k"})
    assert "s3cret" not in str(error.value)


def test_repr_shows_no_secret():
    shown = repr(Settings.from_env({"REDIS_URL": "redis://:pw-secret@127.0.0.1:6379/0", "API_KEYS": "alice:key-s3cret",
                                    "RQ_DASHBOARD_USERNAME": "admin", "RQ_DASHBOARD_PASSWORD": "dash-s3cret",
                                    "REDIS_SENTINEL_PASSWORD": "sentinel-s3cret"}))
    assert "s3cret" not in shown and "pw-secret" not in shown
    assert key_digest("key-s3cret").hex() not in shown and "rq_dashboard_username='admin'" in shown


# --- the Procfile's own Redis gets a generated password when REDIS_URL is unset ---------------

def test_without_redis_url_a_password_is_made_once_in_a_private_file(tmp_path):
    password_file = tmp_path / "secrets" / "redis-password"
    env = {"REDIS_PASSWORD_FILE": str(password_file), "REDIS_LOCAL_PORT": "6390"}
    url = urlsplit(Settings.from_env(env).redis_url)
    assert (url.hostname, url.port, url.username, url.path) == ("127.0.0.1", 6390, "", "/0")
    assert len(url.password) >= 32 and url.password == password_file.read_text().strip()
    assert stat.S_IMODE(os.stat(password_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(password_file.parent).st_mode) == 0o700
    assert Settings.from_env(env).redis_url == urlsplit(url.geturl()).geturl()
    assert os.listdir(password_file.parent) == ["redis-password"]  # no draft left behind


def test_processes_starting_together_all_get_the_same_password(tmp_path):
    for attempt in range(10):
        password_file = tmp_path / f"try-{attempt}" / "redis-password"
        env = {"REDIS_PASSWORD_FILE": str(password_file)}
        barrier, urls = threading.Barrier(12), []

        def start():
            barrier.wait(5)
            urls.append(Settings.from_env(env).redis_url)

        threads = [threading.Thread(target=start) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(urls) == 12 and len(set(urls)) == 1


def test_a_password_file_written_by_hand_is_used_quoted(tmp_path):
    password_file = tmp_path / "redis-password"
    password_file.write_text("p@ss word/1\n")
    password_file.chmod(0o600)
    url = Settings.from_env({"REDIS_PASSWORD_FILE": str(password_file)}).redis_url
    assert url == "redis://:p%40ss%20word%2F1@127.0.0.1:6379/0"


def test_a_password_file_others_can_read_is_a_start_up_error(tmp_path):
    password_file = tmp_path / "redis-password"
    password_file.write_text("s3cret\n")
    for mode in (0o640, 0o604):
        password_file.chmod(mode)
        with pytest.raises(SettingsError, match="can be read by other users") as refused:
            Settings.from_env({"REDIS_PASSWORD_FILE": str(password_file)})
        assert "s3cret" not in str(refused.value)
    password_file.chmod(0o600)
    assert Settings.from_env({"REDIS_PASSWORD_FILE": str(password_file)}).redis_url.endswith("@127.0.0.1:6379/0")


def test_an_empty_password_file_is_a_start_up_error(tmp_path):
    (tmp_path / "redis-password").write_text("\n")
    with pytest.raises(SettingsError, match="REDIS_PASSWORD_FILE"):
        Settings.from_env({"REDIS_PASSWORD_FILE": str(tmp_path / "redis-password")})


@pytest.mark.parametrize("env", [{"REDIS_URL": "redis://127.0.0.1:6379/0"},
                                 {"REDIS_SENTINELS": "198.18.0.1:26379", "REDIS_SENTINEL_MASTER": "m"}])
def test_a_redis_the_user_names_is_used_as_given_and_no_password_is_made(env, tmp_path):
    password_file = tmp_path / "redis-password"
    settings = Settings.from_env({**env, "REDIS_PASSWORD_FILE": str(password_file)})
    assert settings.redis_url == env.get("REDIS_URL", Settings.redis_url)
    assert not password_file.exists()


def test_the_readmes_table_lists_every_setting_and_no_other():
    section = (ROOT / "README.md").read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    listed = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", " ".join(first_cells)))
    assert listed == {f.name.upper() for f in dataclasses.fields(Settings)}


def test_empty_redis_url_and_paths_are_unset(tmp_path):
    settings = Settings.from_env({"REDIS_URL": "", "REDIS_DATA_DIR": "", "REDIS_LOCAL_PORT": "6391",
                                  "REDIS_PASSWORD_FILE": str(tmp_path / "redis-password")})
    assert settings.redis_url.endswith("@127.0.0.1:6391/0") and settings.redis_data_dir == Settings.redis_data_dir

import pytest

from settings import Settings, SettingsError


def test_defaults_match_the_protocol():
    s = Settings()
    assert (s.max_number, s.soft_max_number, s.soft_timeout_s, s.hard_timeout_s) == (1_000_000, 1000, 10, 60)
    assert (s.result_ttl_s, s.failure_ttl_s, s.max_frame_bytes, s.server_port) == (3600, 3600, 65536, 8888)


def test_from_env_reads_upper_case_names():
    s = Settings.from_env({"MAX_NUMBER": "50", "SOFT_MAX_NUMBER": "7", "ALLOWED_ORIGINS": "https://a.example, https://b.example/",
                           "WEBSOCKET_COMPRESSION": "yes", "SWEEP_INTERVAL_S": "0.5"})
    assert s.max_number == 50 and s.soft_max_number == 7
    assert s.allowed_origins == ("https://a.example", "https://b.example")
    assert s.websocket_compression is True and s.sweep_interval_s == 0.5


def test_from_env_ignores_honchos_port():
    assert Settings.from_env({"PORT": "5000"}).server_port == 8888


@pytest.mark.parametrize("name, value", [("MAX_NUMBER", "lots"), ("SOFT_TIMEOUT_S", "-1"),
                                         ("WEBSOCKET_COMPRESSION", "maybe"), ("SWEEP_INTERVAL_S", "0")])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_soft_limit_must_not_exceed_max_number():
    with pytest.raises(SettingsError, match="SOFT_MAX_NUMBER"):
        Settings(max_number=10, soft_max_number=11)


def test_soft_batches_hold_at_least_one_request():
    with pytest.raises(SettingsError, match="SOFT_BATCH_SIZE"):
        Settings(soft_batch_size=0)

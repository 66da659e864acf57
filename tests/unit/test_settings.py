"""Settings from the environment: every kind of field parsed, every bad one reported at once."""

from __future__ import annotations

import pytest

from exchange.settings import SettingsError, load


def test_numbers_with_a_fraction_are_read_from_the_environment():
    s = load({"EXCHANGE_WRITER_LINGER_MS": "2.5", "EXCHANGE_HTTP_HEADER_TIMEOUT_S": "1", "EXCHANGE_PORT": "9000",
              "EXCHANGE_WS_COMPRESSION": "on"})
    assert (s.writer_linger_ms, s.http_header_timeout_s, s.port, s.ws_compression) == (2.5, 1.0, 9000, True)


def test_every_bad_setting_is_reported_in_one_error():
    with pytest.raises(SettingsError) as err:
        load({"EXCHANGE_WRITER_LINGER_MS": "soon", "EXCHANGE_PORT": "eighty", "EXCHANGE_HTTP_BODY_TIMEOUT_S": "-1"})
    text = str(err.value)
    assert "EXCHANGE_WRITER_LINGER_MS" in text and "EXCHANGE_PORT" in text and "EXCHANGE_HTTP_BODY_TIMEOUT_S" in text

from __future__ import annotations

import pytest

from eximhook.periods import format_period, parse_period


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("1h", 3600, id="hour"),
        pytest.param("60m", 3600, id="minutes"),
        pytest.param("3600s", 3600, id="seconds"),
        pytest.param("3600", 3600, id="bare-number"),
        pytest.param("1d", 86400, id="day"),
        pytest.param("2w", 1209600, id="weeks"),
        pytest.param("1h30m", 5400, id="sum"),
        pytest.param(" 90s ", 90, id="spaces"),
        pytest.param("0.5h", 1800, id="fraction"),
    ],
)
def test_parse_period(text: str, seconds: float) -> None:
    assert parse_period(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "-1h", "0s", "1 h", "1hh"], ids=repr)
def test_parse_period_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad period"):
        parse_period(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(3600, "1h"), (5400, "90m"), (86400, "1d"), (90, "90s"), (1.5, "1.5s"), (604800, "1w")],
    ids=str,
)
def test_format_period(seconds: float, text: str) -> None:
    assert format_period(seconds) == text
    assert parse_period(text) == seconds

"""Progress lines: rates over wall time, and none for work too short to tell."""

from __future__ import annotations

import logging
import time

import pytest

from saev_ops.progress import MIN_RATE_S, Progress


def test_a_run_too_short_for_a_rate_shows_none(caplog: pytest.LogCaptureFixture) -> None:
    """Recording 16 images printed "447,452 images/s": the rate of the time between two callbacks."""
    bar = Progress("recording d", 16, "images", logging.getLogger("t"), interactive=False)
    with caplog.at_level(logging.INFO):
        bar.update(16)
    assert "images/s" not in caplog.text and "too short for a rate" in caplog.text


def test_rates_count_wall_time_since_the_work_began() -> None:
    started = time.monotonic() - 4 * MIN_RATE_S  # the work began before the first progress call
    bar = Progress("recording d", 100, "images", logging.getLogger("t"), interactive=False, started=started)
    bar.update(40)
    rate = bar.rate()
    assert rate is not None and rate <= 40 / (4 * MIN_RATE_S) + 1e-6
    assert "images/s, ETA" in bar.line()

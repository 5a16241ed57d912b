"""The measured time left of the app's progress bars (issue 17 item 8): one wording, a moving rate."""

from __future__ import annotations

import pytest

from ui.progress import MovingRate, duration_text, left_text


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("seconds, text", [
    (None, "measuring the speed…"), (0.2, "about 1 s left"), (42.4, "about 42 s left"), (89, "about 89 s left"),
    (90, "about 2 min left"), (360, "about 6 min left"), (1260, "about 21 min left"), (5400, "about 1 h 30 min left"),
    (-3, "about 1 s left"),
])
def test_left_text_has_one_style(seconds, text):
    assert left_text(seconds) == text


def test_duration_text_drops_left():
    assert duration_text(360) == "about 6 min"


def test_moving_rate_follows_the_measured_speed():
    clock = FakeClock()
    rate = MovingRate(clock)
    assert rate.eta_s(0, 10) is None
    rate.update(0)
    assert rate.seconds_per_unit() is None  # one sample: no speed yet
    clock.now += 10
    rate.update(2)  # 5 s per row
    assert rate.seconds_per_unit() == pytest.approx(5.0)
    assert rate.eta_s(2, 10) == pytest.approx(40.0)
    for _ in range(8):  # the machine gets faster: 1 s per row; the window forgets the slow start
        clock.now += 1
        rate.update(rate._samples[-1][1] + 1)
    assert rate.seconds_per_unit() == pytest.approx(1.0)


def test_no_progress_gives_no_speed():
    clock = FakeClock()
    rate = MovingRate(clock)
    rate.update(3)
    clock.now += 5
    rate.update(3)
    assert rate.seconds_per_unit() is None and rate.eta_s(3, 9) is None

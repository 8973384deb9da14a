"""A Ctrl-C counted apart from its KeyboardInterrupt, so a swallowed exception is not a lost press."""

from __future__ import annotations

import os
import signal
import time

import pytest

from drivers.interrupt import CtrlC


def press_ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1)  # the handler raises before this ends


def test_a_swallowed_interrupt_is_raised_again_once() -> None:
    before = signal.getsignal(signal.SIGINT)
    with CtrlC() as ctrl_c:
        ctrl_c.raise_if_pressed()  # nothing pressed yet
        with pytest.raises(KeyboardInterrupt):
            press_ctrl_c()  # as if Ray's wait had consumed this exception
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.raise_if_pressed()
        ctrl_c.raise_if_pressed()  # that press is now handled
    assert signal.getsignal(signal.SIGINT) is before


def test_an_acknowledged_press_only_a_further_one_counts() -> None:
    with CtrlC() as ctrl_c:
        with pytest.raises(KeyboardInterrupt):
            press_ctrl_c()
        ctrl_c.acknowledge()  # the driver is already draining
        ctrl_c.raise_if_pressed()
        with pytest.raises(KeyboardInterrupt):
            press_ctrl_c()
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.raise_if_pressed()

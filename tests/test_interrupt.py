"""A Ctrl-C is counted, not raised where it lands, and raised once at the driver's safe point."""

from __future__ import annotations

import signal

import pytest

from drivers.interrupt import CtrlC


def press_ctrl_c() -> None:
    signal.raise_signal(signal.SIGINT)  # its Python handler has run when this returns


def test_a_press_raises_only_at_the_safe_point_and_once() -> None:
    before = signal.getsignal(signal.SIGINT)
    with CtrlC() as ctrl_c:
        ctrl_c.raise_if_pressed()  # nothing pressed yet
        press_ctrl_c()  # lands mid-work: nothing is cut there
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.raise_if_pressed()
        ctrl_c.raise_if_pressed()  # that press is now handled
    assert signal.getsignal(signal.SIGINT) is before


def test_an_acknowledged_press_only_a_further_one_counts() -> None:
    with CtrlC() as ctrl_c:
        press_ctrl_c()
        ctrl_c.acknowledge()  # the driver is already draining
        ctrl_c.raise_if_pressed()
        press_ctrl_c()
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.raise_if_pressed()


def test_outside_the_block_ctrl_c_interrupts_as_usual() -> None:
    with CtrlC():
        pass
    with pytest.raises(KeyboardInterrupt):
        press_ctrl_c()


def test_while_raising_a_press_interrupts_where_it_lands_and_is_counted_again_after() -> None:
    """For a blocking step with no results to lose (Ray and the adapters starting)."""
    with CtrlC() as ctrl_c:
        with pytest.raises(KeyboardInterrupt), ctrl_c.raising():
            press_ctrl_c()
            pytest.fail("the press did not interrupt the step")
        press_ctrl_c()  # counted again, not raised
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.raise_if_pressed()


def test_a_press_counted_before_a_raising_step_stops_it_from_starting() -> None:
    with CtrlC() as ctrl_c:
        press_ctrl_c()
        with pytest.raises(KeyboardInterrupt), ctrl_c.raising():
            pytest.fail("the step started after a press")
        ctrl_c.raise_if_pressed()  # that press was raised once

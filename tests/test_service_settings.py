"""The collector's process-wide settings (GIL switch interval, garbage collection) hold while any
collector in the process serves, and are restored when the last one stops."""

from __future__ import annotations

import gc
import sys

from collector import server


def test_settings_hold_while_any_collector_serves_and_are_restored_after_the_last() -> None:
    before = (sys.getswitchinterval(), gc.get_threshold())
    settings = server._ServingSettings()
    settings.enter()
    settings.enter()  # a second collector in the same process
    assert sys.getswitchinterval() == min(before[0], server.GIL_SWITCH_INTERVAL_S)
    assert gc.get_threshold() == server.GC_THRESHOLD
    assert gc.get_freeze_count() > 0
    settings.leave()
    assert gc.get_threshold() == server.GC_THRESHOLD  # one still serves
    settings.leave()
    assert (sys.getswitchinterval(), gc.get_threshold()) == before
    assert gc.get_freeze_count() == 0

"""Heavy imports run with the cyclic collector paused, and what they imported is frozen; nothing is frozen
when nothing new was imported, and a caller's own choice to run without the collector is kept."""

from __future__ import annotations

import gc
import sys
import types

import pytest

from qk_sniffer.core.imports import collector_paused


@pytest.fixture(autouse=True)
def _collector_restored():
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    gc.enable() if enabled else gc.disable()


def test_paused_during_the_block_and_what_it_imported_is_frozen(monkeypatch):
    gc.unfreeze()
    with collector_paused():
        assert not gc.isenabled()
        monkeypatch.setitem(sys.modules, "qk_sniffer_test_heavy", types.ModuleType("qk_sniffer_test_heavy"))
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0


def test_nothing_is_frozen_when_nothing_new_was_imported():
    gc.unfreeze()
    with collector_paused():
        import json  # noqa: F401 - imported already: no new module
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_the_collector_is_resumed_after_a_failed_import():
    with pytest.raises(ModuleNotFoundError), collector_paused():
        import qk_sniffer_no_such_module  # noqa: F401
    assert gc.isenabled()


def test_a_caller_that_runs_without_the_collector_keeps_it_off():
    gc.disable()
    gc.unfreeze()
    with collector_paused():
        pass
    assert not gc.isenabled() and gc.get_freeze_count() == 0

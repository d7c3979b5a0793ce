"""The bounded caches (cachetools LRUs): the app's own rollout ids and the stand-in
model's prompt indexes keep the most recent entries and no more."""

from __future__ import annotations

import sys
import threading

import synth_middleware as synth
from synth_middleware.demos.standin.server import _IndexCache

_rollout_module = sys.modules["synth_middleware.rollout"]  # the name is the function


def test_app_chosen_rollout_ids_are_bounded() -> None:
    limit = _rollout_module._MAX_APP_IDS
    with synth.rollout(rollout_id="app-chosen-first"):
        pass
    assert _rollout_module.may_name_rollout("app-chosen-first")

    def remember(start: int) -> None:
        for i in range(start, start + limit // 2 + 1):
            _rollout_module._remember_app_id(f"app-{i}")

    threads = [threading.Thread(target=remember, args=(k * limit,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(_rollout_module._app_ids) == limit
    assert not _rollout_module.may_name_rollout("app-chosen-first")  # the oldest went
    assert _rollout_module.may_name_rollout(f"app-{limit + limit // 2}")
    assert not _rollout_module.may_name_rollout("app-never-seen")
    assert _rollout_module.may_name_rollout("ro_" + "0" * 24)  # our own ids need no memory


def test_index_cache_keeps_the_most_recently_used_prompts() -> None:
    cache = _IndexCache(size=2)
    labels = ("refund", "card_lost")
    a = cache.get(labels, ("Classify the request.",), ())
    b = cache.get(labels, ("Name the intent.",), ())
    assert cache.get(labels, ("Classify the request.",), ()) is a  # a hit: a is now recent
    cache.get(labels, ("Pick one label.",), ())  # evicts b, the least recently used
    assert cache.get(labels, ("Classify the request.",), ()) is a
    again = cache.get(labels, ("Name the intent.",), ())
    assert again is not b and again.labels == b.labels  # embedded anew
    assert again.matrix.shape == b.matrix.shape

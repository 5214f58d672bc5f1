"""The skip table: one builder (skips.skip_table) behind SkipStats.summary and prepare's table."""
from crema_jax.data.cache import sidecars
from crema_jax.data.pipeline import skips

EVENTS = [("too_short", "/d/b"), ("unreadable", "/d/z"), ("too_short", "/d/a"),
          ("too_short", "/d/b")]   # a record read in two epochs counts twice
TABLE = {"too_short": {"count": 3, "paths": ["/d/a", "/d/b", "/d/b"]},
         "unreadable": {"count": 1, "paths": ["/d/z"]}}


def test_the_table_counts_events_by_reason_with_sorted_paths():
    table = skips.skip_table(EVENTS)
    assert table == TABLE and list(table) == ["too_short", "unreadable"]
    assert skips.skip_table([]) == {}


def test_skip_stats_and_prepares_sidecars_give_the_same_table(tmp_path):
    stats = skips.SkipStats(log_dir=str(tmp_path))
    for reason, path in EVENTS:
        stats.record(reason, path, "why")
    assert stats.summary() == TABLE and stats.total == 4
    assert skips.SkipStats.from_log_dir(str(tmp_path)).summary() == TABLE
    shards = [{"skipped": [{"reason": r, "path": p} for r, p in EVENTS[:2]]},
              {"skipped": []}, {"skipped": [{"reason": r, "path": p} for r, p in EVENTS[2:]]}]
    assert sidecars.skip_table(shards) == TABLE

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


def test_the_skips_logged_one_by_one_come_back_from_the_log_dir(tmp_path):
    """`logged` (the paths the warnings named, which predict's summary line names) had come back
    empty from the workers' files: "skipped 4 unreadable records (...): [] and 4 more"."""
    stats = skips.SkipStats(log_dir=str(tmp_path), log_limit=2)
    for reason, path in EVENTS:
        stats.record(reason, path, "why")
    assert stats.logged == ["/d/b", "/d/z"]
    merged = skips.SkipStats.from_log_dir(str(tmp_path))
    assert merged.logged == ["/d/b", "/d/z"] and merged.summary() == TABLE
    # A line written before lines said whether they were logged: every worker skip then was.
    (tmp_path / "skips-1.jsonl").write_text('{"reason": "unreadable", "path": "/d/old", '
                                           '"message": "why"}\n')
    assert skips.SkipStats.from_log_dir(str(tmp_path)).logged == ["/d/old", "/d/b", "/d/z"]


def test_every_skip_keeps_its_message_and_kept_skips_rebuild_the_counts():
    """embed's and predict's side file names every skip with its message (only the first
    log_limit were logged); a resumed run rebuilds its stats from the skips it kept."""
    stats = skips.SkipStats(log_limit=1)
    stats.record("truncated_signal", "a.mat", "a.mat is truncated")
    stats.record("header_syntax", "b.hea", "b.hea:1: bad")
    assert stats.events == [("truncated_signal", "a.mat", "a.mat is truncated"),
                            ("header_syntax", "b.hea", "b.hea:1: bad")]
    assert stats.logged == ["a.mat"]
    again = skips.SkipStats.of_events(stats.events + [("header_syntax", "c.hea", "c")], log_limit=2)
    assert again.counts == {"header_syntax": 2, "truncated_signal": 1}
    assert again.logged == ["a.mat", "b.hea"] and again.events[2] == ("header_syntax", "c.hea", "c")

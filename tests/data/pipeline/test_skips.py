"""SkipStats (exact counts, a bounded few of each reason, every skip handed over when asked)
and the skip table: one builder (skips.skip_table) behind SkipStats.summary and prepare's."""
import pytest

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


def test_a_hundred_thousand_skips_are_counted_exactly_and_keep_only_the_first_few(monkeypatch):
    """A long run with a bad shard: every skip counted, but what is kept in memory (examples,
    logged paths) stays at KEEP per reason whatever the number of skips (it had kept every
    skip with its message)."""
    monkeypatch.setattr(skips.logging, "warning", lambda *args: None)
    stats = skips.SkipStats(log_limit=None)
    events = [("truncated_signal" if i % 5 else "header_syntax", f"/d/r{i}", f"/d/r{i}: bad")
              for i in range(100_000)]
    for reason, path, message in events:
        stats.record(reason, path, message)
    assert stats.total == 100_000
    assert stats.counts == {"truncated_signal": 80_000, "header_syntax": 20_000}
    assert skips.KEEP == 20
    for reason in ("truncated_signal", "header_syntax"):
        first = [(p, m) for r, p, m in events if r == reason][:20]
        assert stats.examples[reason] == first
        assert stats.paths[reason] == [p for p, _ in first]
    assert stats.logged == [p for _, p, _ in events[:20]]
    assert {r: e["count"] for r, e in stats.summary().items()} == {
        "header_syntax": 20_000, "truncated_signal": 80_000}
    for name, value in vars(stats).items():   # nothing else grows with the skips
        if isinstance(value, (list, dict)):
            assert len(value) <= 20, name
            for item in (value.values() if isinstance(value, dict) else ()):
                assert not isinstance(item, list) or len(item) <= 20, name


def test_every_skip_is_handed_over_once_with_its_source_row():
    """embed's and predict's side file names every skip: the inference layer takes each one
    (hand_over=True) and keeps it with its record; a SkipStats made without it keeps none."""
    stats = skips.SkipStats(log_limit=1, hand_over=True)
    stats.record("truncated_signal", "a.mat", "a.mat is truncated", index=4)
    stats.record("header_syntax", "b.hea", "b.hea:1: bad")
    assert stats.take() == [(4, ("truncated_signal", "a.mat", "a.mat is truncated")),
                            (None, ("header_syntax", "b.hea", "b.hea:1: bad"))]
    assert stats.take() == []
    stats.record("header_syntax", "c.hea", "c", index=7)
    assert stats.take() == [(7, ("header_syntax", "c.hea", "c"))]
    assert stats.counts == {"header_syntax": 2, "truncated_signal": 1}
    assert stats.logged == ["a.mat"]
    with pytest.raises(ValueError, match="made without hand_over=True"):
        skips.SkipStats().take()


def test_a_skip_added_from_elsewhere_is_counted_not_logged(monkeypatch):
    """A resumed run's kept skips (and a worker's lines) are counted, never warned again."""
    warned = []
    monkeypatch.setattr(skips.logging, "warning", lambda msg, *a: warned.append(msg % a))
    stats = skips.SkipStats(log_limit=5)
    stats.add("no_signal", "old.hea", "old: no signal")
    stats.record("too_short", "new.hea", "new: 1 s")
    assert warned == ["skipping new.hea [too_short]: new: 1 s"]
    assert stats.counts == {"no_signal": 1, "too_short": 1} and stats.logged == ["new.hea"]
    assert stats.examples == {"no_signal": [("old.hea", "old: no signal")],
                              "too_short": [("new.hea", "new: 1 s")]}

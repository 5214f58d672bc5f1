"""The leaderboard's statistics on made-up predictions (no model runs): Holm's correction of
p-values some of which are bootstrap bounds, worked by hand."""
import pytest

from crema_jax.evaluate import benchmark_leaderboard, paired


def test_an_adjusted_p_inherits_the_bound_of_the_raw_p_it_comes_from():
    # m = 5, sorted as given. Terms (m - j + 1) p_(j): 5 x 2/1001 = 0.00999 (a bound: the true
    # p is below 2/1001), 4 x 0.002 = 0.008, 3 x 0.03 = 0.09, 2 x 0.04 = 0.08, 1 x 0.5 = 0.5;
    # running max 0.00999, 0.00999, 0.09, 0.09, 0.5. The second p is exact but its adjusted
    # value is the first's term: a bound too.
    got = paired.holm_bounded([2 / 1001, 2 / 1000, 0.03, 0.04, 0.5], ["<", None, None, None, None])
    assert [v for v, _ in got] == pytest.approx([10 / 1001, 10 / 1001, 0.09, 0.09, 0.5],
                                                abs=1e-15)
    assert [b for _, b in got] == ["<", "<", None, None, None]
    texts = [benchmark_leaderboard._p(v, b) for v, b in got]
    assert texts == ["< 0.01", "< 0.01", "0.090", "0.090", "0.500"]


def test_an_exact_term_above_a_bound_gives_an_exact_adjusted_p():
    # terms 3 x 0.002 = 0.006 (bound), 2 x 0.01 = 0.02, 1 x 0.02 = 0.02.
    got = paired.holm_bounded([0.002, 0.01, 0.02], ["<", None, None])
    assert got == [(pytest.approx(0.006, abs=1e-15), "<"), (pytest.approx(0.02, abs=1e-15), None),
                   (pytest.approx(0.02, abs=1e-15), None)]


def test_a_capped_or_displaceable_bound_is_at_most_rather_than_below():
    # terms 2 x 0.6 = 1.2 -> 1 (a bound, capped: the true p could give anything up to 1),
    # 1 x 0.7: both adjusted values are 1, at most.
    assert paired.holm_bounded([0.6, 0.7], ["<", None]) == [(1.0, "<="), (1.0, "<=")]
    assert benchmark_leaderboard._p(1.0, "<=") == "≤ 1"
    # An exact 0.002 sorts before the bound 0.0021 (two tests of other valid resample counts);
    # the true p of the bound may sort first: 0.002's adjusted value is 2 x 0.002 = 0.004 or
    # as low as 1 x 0.002, so at most 0.004.
    got = paired.holm_bounded([0.0021, 0.002], ["<", None])
    assert got == [(pytest.approx(0.004, abs=1e-15), "<="), (pytest.approx(0.004, abs=1e-15), "<=")]
    assert paired.holm_bounded([], []) == []
    with pytest.raises(ValueError, match=r"bounds \['>'\]: expected one None or '<' per p-value"):
        paired.holm_bounded([0.1], [">"])

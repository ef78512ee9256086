"""Survival evaluation on hand-checkable data: C-index, median risk groups, log-rank, KM drawing."""

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import chi2

from slidesnake.evaluate.survival import c_index, fold_risk_groups, logrank_p, plot_km_groups, risk_groups


def test_c_index_hand_computed():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    e = np.ones(4, int)
    assert c_index(t, e, np.array([4, 3, 2, 1])) == 1.0  # higher risk dies first: all concordant
    assert c_index(t, e, np.array([1, 2, 3, 4])) == 0.0
    # pairs (1,2) and (1,3) discordant, (2,3) concordant
    assert np.isclose(c_index(t[:3], e[:3], np.array([1, 3, 2])), 1 / 3)
    # the earliest time is censored: only pair (2,3) is comparable, and it is concordant
    assert c_index(t[:3], np.array([0, 1, 1]), np.array([1, 3, 2])) == 1.0
    assert np.isnan(c_index(t[:2], np.zeros(2, int), np.array([1, 2])))  # no event: no comparable pair


def test_c_index_within_folds_ignores_the_folds_offsets():
    # each fold ranks its two patients right, but fold 1's model outputs risks 10 higher: pooled
    # naively, its long survivor (t=4, risk 11) outranks fold 0's early death (t=1, risk 1)
    t = np.array([1.0, 3.0, 2.0, 4.0])
    e = np.ones(4, int)
    risk = np.array([1.0, 0.0, 12.0, 11.0])
    fold = np.array([0, 0, 1, 1])
    assert c_index(t, e, risk, fold) == 1.0
    assert np.isclose(c_index(t, e, risk), 3 / 6)  # cross-fold pairs at t=(1,2), (1,4), (3,4) discordant
    # a fold without a comparable pair adds nothing: fold 1 all censored
    assert c_index(t, np.array([1, 1, 0, 0]), risk, fold) == 1.0


def test_risk_groups_split_at_the_median():
    assert list(risk_groups(np.array([1, 2, 3, 4]))) == [0, 0, 1, 1]
    assert list(risk_groups(np.array([3, 1, 2]))) == [1, 0, 0]  # the median itself is "low"


def test_fold_risk_groups_split_each_fold_on_its_own_scale():
    risk = np.array([0.1, 0.2, 0.3, 0.4, 10.0, 11.0, 12.0, 13.0])
    fold = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert list(fold_risk_groups(risk, fold)) == [0, 0, 1, 1, 0, 0, 1, 1]
    assert list(risk_groups(risk)) == [0, 0, 0, 0, 1, 1, 1, 1]  # a pooled split would follow the folds


def test_logrank_matches_hand_computation():
    # A = {1, 3}, B = {2, 4}, all events: sum(O_A - E_A) = 2/3, variance = 1/4 + 2/9 + 1/4 = 13/18
    time, event, groups = np.array([1, 3, 2, 4.0]), np.ones(4, int), np.array([0, 0, 1, 1])
    expected = chi2.sf((2 / 3) ** 2 / (13 / 18), df=1)
    assert np.isclose(logrank_p(time, event, groups), expected)


def test_logrank_separated_and_identical_groups():
    early, late = np.arange(1.0, 21.0), np.arange(101.0, 121.0)
    groups = np.repeat([0, 1], 20)
    assert logrank_p(np.concatenate([late, early]), np.ones(40, int), groups) < 0.01
    same = np.concatenate([early, early])
    assert logrank_p(same, np.tile(np.arange(20) % 2, 2), groups) > 0.5
    assert np.isnan(logrank_p(same, np.ones(40, int), np.zeros(40, int)))  # one group only


def test_plot_km_groups_draws_both_groups_and_titles_p():
    fig = Figure()
    ax = fig.add_subplot()
    time = np.concatenate([np.arange(101.0, 111.0), np.arange(1.0, 11.0)])
    p = plot_km_groups(ax, time, np.ones(20, int), np.repeat([0, 1], 10), title="os:")
    assert p < 0.01 and ax.get_title() == f"os: log-rank p={p:.3g}"
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["high risk (n=10)", "low risk (n=10)"]
    high = [line for line in ax.get_lines() if line.get_label() == "high risk (n=10)"][0]
    assert high.get_ydata()[-1] == 0.0  # every high-risk patient died

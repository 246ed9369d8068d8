"""Paired statistics against values computed by hand."""

import pytest

from distill.stats import (
    StatsError,
    compare_correct,
    compare_predictions,
    mcnemar_exact,
    paired_bootstrap_ci,
    pairwise,
    seed_example_bootstrap_ci,
    seed_pooled,
    seed_t_test,
)


@pytest.mark.parametrize(
    "a_only, b_only, p",
    [
        # two-sided exact binomial, p = min(1, 2 * P(X <= min(b, c))), X ~ Bin(b + c, 1/2)
        (1, 5, 2 * (1 + 6) / 64),  # 0.21875
        (5, 1, 2 * (1 + 6) / 64),
        (0, 5, 2 / 32),  # 0.0625
        (2, 8, 2 * (1 + 10 + 45) / 1024),  # 0.109375
        (10, 0, 2 / 1024),
        (3, 1, 2 * (1 + 4) / 16),  # 0.625
        (3, 3, 1.0),
        (0, 1, 1.0),
        (0, 0, 1.0),  # no discordant pairs: no evidence of a difference
    ],
)
def test_mcnemar_exact_by_hand(a_only, b_only, p):
    assert mcnemar_exact(a_only, b_only) == pytest.approx(p, abs=1e-12)


def test_compare_correct_table():
    # both right 1, a only 3, b only 1, both wrong 1
    a = [True, True, True, True, False, False]
    b = [True, False, False, False, True, False]
    r = compare_correct(a, b, "std", "sal")
    assert (r.both_correct, r.a_only, r.b_only, r.both_wrong) == (1, 3, 1, 1)
    assert (r.n, r.accuracy_a, r.accuracy_b) == (6, pytest.approx(4 / 6), pytest.approx(2 / 6))
    assert r.difference == pytest.approx(1 / 3)
    assert r.mcnemar_p == pytest.approx(0.625)
    assert r.ci_low <= r.difference <= r.ci_high
    assert (r.model_a, r.model_b) == ("std", "sal")


def test_bootstrap_by_hand():
    # d = [1, 0]: a resample mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the
    # 2.5th and 97.5th percentiles are 0 and 1.
    assert paired_bootstrap_ci([True, True], [False, True]) == (0.0, 1.0)
    # every example differs the same way: the interval is that difference
    assert paired_bootstrap_ci([True] * 5, [False] * 5) == (1.0, 1.0)
    assert paired_bootstrap_ci([True] * 5, [True] * 5) == (0.0, 0.0)


def test_bootstrap_matches_normal_approximation():
    # 30 a-only, 10 b-only, 160 concordant: d has mean 0.1 and variance 0.2 - 0.01 = 0.19,
    # so the interval is about 0.1 +- 1.96 * sqrt(0.19 / 200) = [0.040, 0.160].
    a = [True] * 30 + [False] * 10 + [True] * 80 + [False] * 80
    b = [False] * 30 + [True] * 10 + [True] * 80 + [False] * 80
    low, high = paired_bootstrap_ci(a, b, n_boot=20_000, seed=1)
    assert low == pytest.approx(0.040, abs=0.01) and high == pytest.approx(0.160, abs=0.01)


def test_bootstrap_seeded_and_antisymmetric():
    a = [True, False, True, True, False, True, False, True]
    b = [False, False, True, False, True, True, True, False]
    assert paired_bootstrap_ci(a, b, seed=3) == paired_bootstrap_ci(a, b, seed=3)
    low, high = paired_bootstrap_ci(a, b, seed=3)
    assert paired_bootstrap_ci(b, a, seed=3) == (pytest.approx(-high), pytest.approx(-low))
    with pytest.raises(StatsError, match="length"):
        paired_bootstrap_ci(a, b[:-1])


def _preds(pattern: dict[str, bool]) -> list[dict]:
    return [{"id": i, "correct": ok, "prediction": "x"} for i, ok in pattern.items()]


def test_compare_predictions_aligns_by_id():
    a = _preds({"q1": True, "q2": True, "q3": False})
    b = list(reversed(_preds({"q1": True, "q2": False, "q3": False})))  # another order
    r = compare_predictions(a, b, "a", "b")
    assert (r.a_only, r.b_only, r.both_correct, r.both_wrong) == (1, 0, 1, 1)
    with pytest.raises(StatsError, match="not scored on the same examples"):
        compare_predictions(a, _preds({"q1": True, "q2": True, "q4": False}))
    with pytest.raises(StatsError, match="appears twice"):
        compare_predictions(a + a[:1], b)
    with pytest.raises(StatsError, match="no 'choice_correct'"):
        compare_predictions(
            [{"id": "q1", "choice_correct": None}], [{"id": "q1", "choice_correct": True}],
            key="choice_correct",
        )  # fmt: skip


def test_pairwise_skips_pairs_on_other_examples():
    runs = {
        "std": _preds({"q1": True, "q2": False}),
        "sal": _preds({"q1": True, "q2": True}),
        "rnd": _preds({"q1": False, "q2": True}),
        "other": _preds({"q9": True}),
    }
    pairs, skipped = pairwise(runs)
    assert [(p.model_a, p.model_b) for p in pairs] == [
        ("std", "sal"),
        ("std", "rnd"),
        ("sal", "rnd"),
    ]
    assert skipped == [("std", "other"), ("sal", "other"), ("rnd", "other")]
    assert pairs[0].difference == pytest.approx(-0.5) and pairs[1].mcnemar_p == 1.0


def _ids(values: list[bool]) -> dict[str, bool]:
    return {f"q{i}": v for i, v in enumerate(values)}


def test_seed_pooled_with_one_seed_is_mcnemar_and_the_paired_bootstrap():
    a = [True, True, False, True, False, True, True, False, True, True]
    b = [False, True, False, False, False, True, False, True, False, False]
    pooled = seed_pooled([_ids(a)], [_ids(b)], "a", "b")
    direct = compare_predictions(_preds(_ids(a)), _preds(_ids(b)), "a", "b")
    assert pooled.p_value == pytest.approx(direct.mcnemar_p, abs=1e-12)
    assert pooled.p_value == pytest.approx(mcnemar_exact(5, 1), abs=1e-12)
    assert (pooled.ci_low, pooled.ci_high) == (direct.ci_low, direct.ci_high)
    assert pooled.difference == pytest.approx(direct.difference)
    assert pooled.per_seed == [pytest.approx(direct.difference)]


def test_seed_pooled_two_seeds_by_hand():
    # a: two seeds, b: one run (the untrained student is paired with every seed of a).
    a0 = _ids([True, True, False, True])
    a1 = _ids([True, False, False, True])
    b = _ids([False, False, False, True])
    r = seed_pooled([a0, a1], [b], "a", "b")
    # per-example means of a: 1, 0.5, 0, 1; differences against b: 1, 0.5, 0, 0.
    assert (r.n, r.seeds_a, r.seeds_b) == (4, 2, 1)
    assert r.accuracy_a == pytest.approx(2.5 / 4) and r.accuracy_b == pytest.approx(0.25)
    assert r.difference == pytest.approx(1.5 / 4)
    assert r.per_seed == [pytest.approx(0.5), pytest.approx(0.25)]
    # Exact sign-flip test over the 16 patterns: |mean| >= 1.5/4 holds for +(1 + 0.5) and
    # -(1 + 0.5) only, each with 4 signs of the two zero differences: 8 of 16.
    assert r.p_value == pytest.approx(8 / 16)
    assert r.ci_low <= r.difference <= r.ci_high
    assert r.seeds_agree and r.to_dict()["seeds_agree"] is True
    split = seed_pooled([a0, _ids([False, False, False, False])], [b])  # +0.5 and -0.25
    assert split.per_seed == [pytest.approx(0.5), pytest.approx(-0.25)]
    assert not split.seeds_agree and split.to_dict()["seeds_agree"] is False
    # Antisymmetric, and seeds of a model must share their examples.
    back = seed_pooled([b], [a0, a1], "b", "a")
    assert back.difference == pytest.approx(-r.difference) and back.p_value == r.p_value
    with pytest.raises(StatsError, match="its seeds were not scored on the same examples"):
        seed_pooled([a0, {"q0": True}], [b])
    with pytest.raises(StatsError, match="not scored on the same examples"):
        seed_pooled([a0], [{"q9": True}])


def test_seed_pooled_random_flips_agree_with_brute_force():
    import itertools
    import random

    rng = random.Random(3)
    a = [_ids([rng.random() < 0.6 for _ in range(12)]) for _ in range(3)]
    b = [_ids([rng.random() < 0.4 for _ in range(12)]) for _ in range(3)]
    r = seed_pooled(a, b)
    d = [sum(x[k] for x in a) / 3 - sum(y[k] for y in b) / 3 for k in sorted(a[0])]
    obs = abs(sum(d))
    hits = sum(abs(sum(s * v for s, v in zip(signs, d))) >= obs - 1e-12
               for signs in itertools.product((1, -1), repeat=len(d)))  # fmt: skip
    assert r.p_value == pytest.approx(hits / 2 ** len(d))
    # Seeds paired in order when both have several.
    assert r.per_seed == [
        pytest.approx(sum(x.values()) / 12 - sum(y.values()) / 12) for x, y in zip(a, b)
    ]


def test_seed_interval_widens_by_the_seeds_spread():
    # Seed 0: a right on every example and b wrong; seed 1 the reverse. Each example's seed
    # average is level (0.5 - 0.5), so the examples' interval is [0, 0]; a new seed may go
    # either way, so the seeds' interval is [-1, +1] (draws +1, 0, 0, -1: 1/4 at each end).
    n = 10
    right, wrong = _ids([True] * n), _ids([False] * n)
    r = seed_pooled([right, wrong], [wrong, right], "a", "b")
    assert r.per_seed == [1.0, -1.0] and r.difference == 0.0
    assert (r.ci_low, r.ci_high) == (0.0, 0.0)
    assert (r.seed_ci_low, r.seed_ci_high) == (-1.0, 1.0)
    assert r.seed_t_p == pytest.approx(1.0)  # mean difference 0
    assert r.to_dict()["seed_ci_low"] == -1.0


def test_seed_example_bootstrap_matches_exact_enumeration():
    import itertools

    import numpy as np

    from distill.stats import _seed_example_means

    d = np.array([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]])  # 2 seed pairs x 3 examples
    exact: dict[float, float] = {}
    draws = list(itertools.product(range(2), repeat=2))
    cols = list(itertools.product(range(3), repeat=3))
    for rows in draws:
        per_example = d[list(rows)].mean(axis=0)
        for c in cols:
            v = round(float(per_example[list(c)].mean()), 9)
            exact[v] = exact.get(v, 0.0) + 1 / (len(draws) * len(cols))
    means = _seed_example_means(d, 200_000, np.random.default_rng(1))
    got = {v: float(np.mean(np.isclose(means, v))) for v in exact}
    assert sum(got.values()) == pytest.approx(1.0)  # no value outside the exact support
    for v, prob in exact.items():
        assert got[v] == pytest.approx(prob, abs=0.005), v
    # An example-only bootstrap of the seed average has another distribution: its variance
    # misses the seeds' spread.
    exact_var = sum(p * v * v for v, p in exact.items()) - sum(p * v for v, p in exact.items()) ** 2
    example_only = d.mean(axis=0)
    assert exact_var > example_only.var() / 3 + 0.01
    assert means.var() == pytest.approx(exact_var, rel=0.02)


def test_seed_interval_with_identical_seeds_is_the_examples_interval():
    import random

    rng = random.Random(5)
    a = _ids([rng.random() < 0.6 for _ in range(200)])
    b = _ids([rng.random() < 0.4 for _ in range(200)])
    r = seed_pooled([a, a, a], [b, b, b])
    assert r.per_seed == [pytest.approx(r.difference)] * 3 and r.seed_t_p == 0.0
    assert r.seed_ci_low == pytest.approx(r.ci_low, abs=0.015)
    assert r.seed_ci_high == pytest.approx(r.ci_high, abs=0.015)
    one = seed_example_bootstrap_ci([[1.0, 0.0, 1.0, 1.0]])  # one run: example bootstrap
    assert one[0] <= 0.75 <= one[1] and one[1] == 1.0
    with pytest.raises(StatsError, match="runs x examples"):
        seed_example_bootstrap_ci([1.0, 0.0])


def test_seed_t_test_by_hand():
    import math

    # t = mean / (sd / sqrt(k)); with 2 degrees of freedom the two-sided p is
    # 1 - t / sqrt(2 + t^2); with 1 (Cauchy), 1 - 2 atan(t) / pi.
    t = 0.2 / (0.1 / math.sqrt(3))
    assert seed_t_test([0.1, 0.2, 0.3]) == pytest.approx(1 - t / math.sqrt(2 + t * t))
    t = 0.15 / (math.sqrt(0.005) / math.sqrt(2))
    assert seed_t_test([0.2, 0.1]) == pytest.approx(1 - 2 * math.atan(t) / math.pi)
    assert seed_t_test([-0.3, -0.1, -0.2]) == seed_t_test([0.3, 0.1, 0.2])
    assert seed_t_test([0.5]) is None
    assert seed_t_test([0.5, 0.5]) == 0.0 and seed_t_test([0.0, 0.0]) == 1.0


def test_seed_pooled_refuses_seeds_it_cannot_pair():
    a = [_ids([True, False])] * 3
    b = [_ids([False, False])] * 2
    with pytest.raises(StatsError, match="3 seeds and b 2: seeds cannot be paired"):
        seed_pooled(a, b, "a", "b")

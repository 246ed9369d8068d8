"""Paired statistics for two models scored on the same examples.

Two models answer the same questions, so their errors are correlated; unpaired intervals
(each model's own Wilson interval) overlap far more than the difference warrants. Here:

- accuracy difference ``acc(a) - acc(b)``;
- its paired bootstrap interval: resample examples (with replacement, seeded), take the mean
  of the per-example differences, percentiles of those means;
- McNemar's exact test: under "no difference" each discordant example (one model right, the
  other wrong) is a fair coin, so the p-value is a two-sided binomial test of the ``a only``
  count among the discordant ones (``scipy.stats.binomtest``).

With several training seeds per model, one seed's table mixes the teacher's effect with
training noise. :func:`seed_pooled` averages each example's correctness over a model's seeds
and compares those per-example means: the same paired bootstrap, and a paired sign-flip
permutation test (``scipy.stats.permutation_test``), which with one seed per model is exactly
McNemar's test. Both cover the test sample for the seeds run. To ask about a new training seed
as well, :func:`seed_example_bootstrap_ci` resamples the seeds and then the examples (a
two-level bootstrap, as for runs x tasks in Agarwal et al. 2021, "Deep RL at the edge of the
statistical precipice"), and a one-sample t-test on the per-seed differences gives a p-value
with k - 1 degrees of freedom (``scipy.stats.ttest_1samp``). With three seeds both are wide,
which is the point: three seeds cannot pin a difference smaller than their spread.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

from explain.errors import KDLensError


class StatsError(KDLensError):
    """Two prediction lists that cannot be compared (different examples, missing fields)."""


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    return float(sps.binomtest(a_only, n, 0.5, alternative="two-sided").pvalue)


def paired_bootstrap_ci(
    a: list[bool], b: list[bool], n_boot: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of ``mean(a) - mean(b)`` over example resamples (seeded)."""
    if len(a) != len(b):
        raise StatsError(f"paired lists differ in length: {len(a)} vs {len(b)}")
    if not a:
        return 0.0, 0.0
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // len(d))  # bounded memory for long lists
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, len(d), size=(stop - start, len(d)))
        means[start:stop] = d[idx].mean(axis=1)
    return _percentile_interval(means, level)


def _percentile_interval(means: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def _seed_example_means(d: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` draws of the two-level bootstrap mean of ``d`` (runs x examples): each draw
    takes ``k`` runs with replacement, averages them per example, then takes ``n`` examples
    with replacement and averages those."""
    k, n = d.shape
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // (k * n))  # bounded memory: a chunk holds chunk x k x n floats
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        rows = rng.integers(0, k, size=(stop - start, k))
        cols = rng.integers(0, n, size=(stop - start, n))
        per_example = d[rows].mean(axis=1)  # (draws, n): the drawn runs averaged
        means[start:stop] = np.take_along_axis(per_example, cols, axis=1).mean(axis=1)
    return means


def seed_example_bootstrap_ci(
    d: np.ndarray | list[list[float]], n_boot: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean of ``d``, a runs x examples array of per-example
    differences (row i: seed pair i), when both the runs and the examples are resampled.
    With one run it is an example bootstrap; with runs that disagree it widens by their
    spread, which the example bootstrap of :func:`seed_pooled` ignores."""
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2:
        raise StatsError(f"expected a runs x examples array, got shape {d.shape}")
    if d.size == 0:
        return 0.0, 0.0
    return _percentile_interval(_seed_example_means(d, n_boot, np.random.default_rng(seed)), level)


def seed_t_test(per_seed: list[float]) -> float | None:
    """Two-sided p of a one-sample t-test that the per-seed differences average 0 (k - 1
    degrees of freedom); None with fewer than two seeds. Equal nonzero differences give 0."""
    x = np.asarray(per_seed, dtype=np.float64)
    if len(x) < 2:
        return None
    if np.ptp(x) == 0:  # no spread: t is infinite (or 0/0 when every difference is 0)
        return 0.0 if x[0] != 0 else 1.0
    return float(sps.ttest_1samp(x, 0.0).pvalue)


@dataclass
class PairedComparison:
    model_a: str
    model_b: str
    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float  # accuracy_a - accuracy_b
    ci_low: float  # paired bootstrap interval of the difference
    ci_high: float
    mcnemar_p: float
    both_correct: int
    a_only: int  # a right, b wrong
    b_only: int
    both_wrong: int

    def to_dict(self) -> dict:
        return asdict(self)


def compare_correct(
    a: list[bool],
    b: list[bool],
    model_a: str = "a",
    model_b: str = "b",
    n_boot: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """Paired figures for two aligned correctness lists."""
    if len(a) != len(b):
        raise StatsError(f"paired lists differ in length: {len(a)} vs {len(b)}")
    n = len(a)
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    both = sum(1 for x, y in zip(a, b) if x and y)
    acc_a = sum(map(bool, a)) / n if n else 0.0
    acc_b = sum(map(bool, b)) / n if n else 0.0
    low, high = paired_bootstrap_ci(a, b, n_boot, seed)
    return PairedComparison(
        model_a, model_b, n, acc_a, acc_b, acc_a - acc_b, low, high,
        mcnemar_exact(a_only, b_only), both, a_only, b_only, n - both - a_only - b_only,
    )  # fmt: skip


def correct_by_id(preds: list[dict], name: str, key: str) -> dict[str, bool]:
    """``{example id: correct}`` of one prediction list; refuses repeated ids and missing values."""
    out: dict[str, bool] = {}
    for p in preds:
        if "id" not in p or key not in p:
            raise StatsError(f"{name}: a prediction lacks 'id' or {key!r}")
        pid = str(p["id"])
        if pid in out:
            raise StatsError(f"{name}: example id {pid!r} appears twice")
        if p[key] is None:
            raise StatsError(f"{name}: example {pid!r} has no {key!r} value")
        out[pid] = bool(p[key])
    return out


def compare_predictions(
    a: list[dict],
    b: list[dict],
    model_a: str = "a",
    model_b: str = "b",
    key: str = "correct",
    n_boot: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """Paired figures for two per-example prediction lists (``{"id", key}`` records), aligned
    by example id; a :class:`StatsError` when they do not cover the same examples."""
    ma, mb = correct_by_id(a, model_a, key), correct_by_id(b, model_b, key)
    if ma.keys() != mb.keys():
        only_a, only_b = sorted(ma.keys() - mb.keys()), sorted(mb.keys() - ma.keys())
        raise StatsError(
            f"{model_a} and {model_b} were not scored on the same examples "
            f"({len(only_a)} only in {model_a}, e.g. {only_a[:3]}; "
            f"{len(only_b)} only in {model_b}, e.g. {only_b[:3]})"
        )
    ids = sorted(ma)
    return compare_correct(
        [ma[i] for i in ids], [mb[i] for i in ids], model_a, model_b, n_boot, seed
    )


@dataclass
class SeedPooledComparison:
    """Two models compared on per-example correctness averaged over their seeds."""

    model_a: str
    model_b: str
    n: int
    seeds_a: int
    seeds_b: int
    accuracy_a: float  # mean over seeds
    accuracy_b: float
    difference: float
    ci_low: float  # paired bootstrap over examples of the seed-averaged differences
    ci_high: float
    p_value: float  # paired sign-flip permutation test of the mean difference
    per_seed: list[float]  # accuracy_a - accuracy_b at each seed (see seed_pooled)
    # Two-level bootstrap (seed pairs, then examples): the interval for a new seed.
    seed_ci_low: float = 0.0
    seed_ci_high: float = 0.0
    seed_t_p: float | None = None  # t-test on per_seed (None with one seed pair)

    @property
    def seeds_agree(self) -> bool:
        """Every seed's difference has the sign of the pooled one. The interval and p cover
        the test sample for these seeds, not a new seed: when seeds disagree, a new seed may
        well reverse the difference."""
        sign = np.sign(self.difference)
        return bool(sign != 0 and all(np.sign(d) == sign for d in self.per_seed))

    def to_dict(self) -> dict:
        return asdict(self) | {"seeds_agree": self.seeds_agree}


def _seed_means(runs: list[dict[str, bool]], name: str) -> dict[str, float]:
    if not runs:
        raise StatsError(f"{name}: no runs")
    ids = runs[0].keys()
    if any(r.keys() != ids for r in runs):
        raise StatsError(f"{name}: its seeds were not scored on the same examples")
    return {i: sum(r[i] for r in runs) / len(runs) for i in ids}


def seed_pooled(
    a: list[dict[str, bool]],
    b: list[dict[str, bool]],
    model_a: str = "a",
    model_b: str = "b",
    n_boot: int = 10_000,
    seed: int = 0,
) -> SeedPooledComparison:
    """Compare two models given as one ``{example id: correct}`` map per seed.

    Each example's correctness is averaged over the model's seeds; the difference of those
    means is bootstrapped over examples, and its p-value comes from flipping the sign of each
    example's difference (exact up to 2^16 sign patterns, else ``n_boot`` random ones). The
    per-seed differences pair seed i of ``a`` with seed i of ``b``; a model with one run (the
    untrained student) is paired with every seed of the other. Over those seed pairs,
    ``seed_ci_*`` is the two-level bootstrap interval (:func:`seed_example_bootstrap_ci`) and
    ``seed_t_p`` the t-test of the per-seed differences (:func:`seed_t_test`).
    """
    ma, mb = _seed_means(a, model_a), _seed_means(b, model_b)
    if ma.keys() != mb.keys():
        raise StatsError(f"{model_a} and {model_b} were not scored on the same examples")
    if len(a) == 1 or len(b) == 1:
        pairs = [(x, y) for x in a for y in b]
    elif len(a) == len(b):
        pairs = list(zip(a, b))
    else:
        raise StatsError(f"{model_a} has {len(a)} seeds and {model_b} {len(b)}: "
                         "seeds cannot be paired")  # fmt: skip
    ids = sorted(ma)
    xa = np.array([ma[i] for i in ids], dtype=np.float64)
    xb = np.array([mb[i] for i in ids], dtype=np.float64)
    low, high = paired_bootstrap_ci(list(xa), list(xb), n_boot, seed)
    d = xa - xb
    if not np.any(d):
        p = 1.0
    else:
        res = sps.permutation_test(
            (xa, xb),
            lambda x, y, axis: np.mean(x - y, axis=axis),
            permutation_type="samples",
            vectorized=True,
            n_resamples=n_boot if len(ids) > 16 else 2 ** len(ids),
            alternative="two-sided",
            random_state=seed,
        )
        p = float(min(1.0, res.pvalue))
    rows = np.array([[float(x[i]) - float(y[i]) for i in ids] for x, y in pairs])
    per_seed = [float(r.mean()) for r in rows]
    seed_low, seed_high = seed_example_bootstrap_ci(rows, n_boot, seed)
    return SeedPooledComparison(
        model_a, model_b, len(ids), len(a), len(b), float(xa.mean()), float(xb.mean()),
        float(d.mean()), low, high, p, per_seed, seed_low, seed_high, seed_t_test(per_seed),
    )  # fmt: skip


def pairwise(
    runs: dict[str, list[dict]], key: str = "correct", n_boot: int = 10_000, seed: int = 0
) -> tuple[list[PairedComparison], list[tuple[str, str]]]:
    """Every pair of named prediction lists scored on the same examples; plus the pairs
    skipped because their example sets differ."""
    done, skipped = [], []
    for (na, pa), (nb, pb) in itertools.combinations(runs.items(), 2):
        ids_a = {str(p.get("id")) for p in pa}
        ids_b = {str(p.get("id")) for p in pb}
        if ids_a != ids_b:
            skipped.append((na, nb))
            continue
        done.append(compare_predictions(pa, pb, na, nb, key, n_boot, seed))
    return done, skipped


__all__ = [
    "PairedComparison",
    "SeedPooledComparison",
    "StatsError",
    "compare_correct",
    "compare_predictions",
    "correct_by_id",
    "mcnemar_exact",
    "paired_bootstrap_ci",
    "pairwise",
    "seed_example_bootstrap_ci",
    "seed_pooled",
    "seed_t_test",
]

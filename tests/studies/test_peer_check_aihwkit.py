"""studies/peer_check_aihwkit.py: the comparison logic (aihwkit itself is not needed: CI does not build it)."""

import numpy as np
import pytest
import scipy.stats
import torch

from tests.helpers import load_study_script


@pytest.fixture(scope="module")
def peer():
    return load_study_script("peer_check_aihwkit")


def tied_counts(seed, n_chips=200, n_test=360, p=0.975):
    """Correct counts of chips from one distribution (binomial): heavily tied integers, as accurate chips are."""
    return np.random.default_rng(seed).binomial(n_test, p, size=n_chips).astype(np.int64)


def concentrated_counts(seed, n_chips=200):
    """Nearly every chip at one count (the low-noise case: sd 0.0003 in accuracy on 360 images)."""
    return np.random.default_rng(seed).choice([350, 351, 352], p=[0.02, 0.96, 0.02], size=n_chips).astype(np.int64)


@pytest.mark.parametrize("draw", [tied_counts, concentrated_counts])
def test_counts_agree_where_mixed_precision_accuracies_did_not(peer, draw):
    """Two samples of the same tied count distribution: on counts no test says "different" (p > 1e-5); the old
    comparison (float32 mean of correct flags vs float64 count / n) breaks every tie, and on concentrated
    distributions KS 'finds' a difference (p < 1e-10)."""
    a, b = draw(0), draw(1)
    r = peer.compare_counts(a, b)
    assert min(r["ks_pvalue"], r["welch_pvalue"], r["levene_pvalue"]) > 1e-5
    if draw is tied_counts:
        return
    n = 360
    float32_means = np.array([float((torch.arange(n) < c).float().mean()) for c in a])   # one side, as before
    float64_ratios = b / n                                                               # the other side
    assert scipy.stats.ks_2samp(float32_means, float64_ratios).pvalue < 1e-10


def test_counts_that_differ_are_found(peer):
    """A shift of 3 images (one sd) in the mean and a 2.5x spread are detected by Welch and Levene respectively."""
    a = tied_counts(0)
    r = peer.compare_counts(a + 3, tied_counts(1))
    assert r["welch_pvalue"] < 1e-5 and r["mean_difference_ci95"][0] > 0
    rng = np.random.default_rng(2)
    wide = (np.round(a.mean() + 2.5 * (tied_counts(3) - a.mean()))).astype(np.int64)
    assert peer.compare_counts(wide, rng.permutation(a))["levene_pvalue"] < 1e-5


def test_compare_counts_refuses_accuracies(peer):
    with pytest.raises(TypeError, match="integer"):
        peer.compare_counts(np.array([0.9, 0.91]), np.array([1, 2]))
    with pytest.raises(ValueError, match="shape"):
        peer.compare_counts(np.array([1]), np.array([1, 2]))


def test_markdown_states_both_noise_laws(peer):
    r = peer.compare_counts(tied_counts(0), tied_counts(1))
    report = {"status": "compared", "network": "n", "data": "d", "n_test": 360, "float_correct_count": 350,
              "command": "c", "pcm_read_noise": True, "wall_s": 1.0,
              "chips": 200, "seed": 0, "comparisons": {"gaussian": {"sigma=0.05": r}, "pcm": {"tau=1s": r}}}
    md = peer.markdown(report)
    for key in ("gaussian", "pcm"):
        assert peer.NOISE_LAWS[key]["anvm_stats"] in md and peer.NOISE_LAWS[key]["aihwkit"] in md
    assert f"{r['ks_pvalue']:.3g}" in md

"""The Fréchet distance: closed-form Gaussian cases and agreement with scipy's sqrtm path (StyleGAN-V's formula)."""

from __future__ import annotations

import numpy as np
import pytest

from realdpo.evaluation.frechet import feature_stats, frechet_distance, frechet_distance_sqrtm, frechet_from_features


def test_identical_gaussians_are_at_distance_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T + np.eye(6)
    assert frechet_distance(np.ones(6), cov, np.ones(6), cov) == pytest.approx(0.0, abs=1e-8)


def test_closed_form_diagonal_covariances():
    # For commuting (here diagonal) covariances: d = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = 1.0 + 0.0 + 4.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    assert expected == 7.0


def test_closed_form_scaled_covariance_in_a_rotated_basis():
    # S2 = k^2 S1 (any S1): Tr(S1 + S2 - 2 sqrt(S1 S2)) = (1 - k)^2 Tr(S1).
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    s1 = q @ np.diag([0.5, 1.0, 2.0, 3.0, 5.0]) @ q.T
    k = 3.0
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = float(np.sum((mu1 - mu2) ** 2) + (1 - k) ** 2 * np.trace(s1))
    assert frechet_distance(mu1, s1, mu2, k * k * s1) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scipy_sqrtm_on_full_rank_covariances(seed):
    rng = np.random.default_rng(seed)
    f1 = rng.normal(size=(200, 16))
    f2 = rng.normal(loc=0.3, scale=1.5, size=(150, 16)) @ rng.normal(size=(16, 16)) * 0.3
    m1, s1 = feature_stats(f1)
    m2, s2 = feature_stats(f2)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(frechet_distance_sqrtm(m1, s1, m2, s2), rel=1e-6)
    assert frechet_from_features(f1, f2) == pytest.approx(frechet_distance(m1, s1, m2, s2))


def test_rank_deficient_covariances_stay_real_and_close_to_sqrtm():
    # Fewer samples than dimensions (the usual FVD situation with few videos): singular covariances.
    rng = np.random.default_rng(3)
    f1, f2 = rng.normal(size=(5, 12)), rng.normal(loc=0.5, size=(6, 12))
    m1, s1 = feature_stats(f1)
    m2, s2 = feature_stats(f2)
    ours = frechet_distance(m1, s1, m2, s2)
    assert np.isfinite(ours) and ours > 0
    assert ours == pytest.approx(frechet_distance_sqrtm(m1, s1, m2, s2), rel=1e-3)


def test_feature_stats_needs_two_vectors():
    with pytest.raises(ValueError):
        feature_stats(np.zeros((1, 4)))

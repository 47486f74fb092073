"""Accuracy assessment of an error matrix of pixel counts, in float64: the sample's
accuracies and Cohen's kappa, and the area-based estimates of Olofsson et al. (2014,
"Good practices for estimating area and assessing accuracy of land change", Remote
Sensing of Environment 148, 42-57), the map's classes being the strata.

With W_i the map's share of class i, n_ij the pixels classified i whose reference is j
and n_i. their row total, the estimated proportion of area is p_ij = W_i n_ij / n_i.
(eq. 9); overall, user's and producer's accuracies are sum(p_ii), p_ii / p_i. and
p_jj / p_.j (eqs. 1 to 3) with the variances of eqs. 5 to 7, and the standard error of
p_.k is eq. 10. A map class with no reference pixel is a stratum the estimates cannot
include: its share is `unsampled`, and it adds nothing to any sum. A variance needs two
pixels in each stratum that it sums over: with one, it is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Assessment:
    """The error matrix (`counts`, rows classified, columns reference, in the order of
    `classes`), the map's pixels per class, and every figure derived from them."""

    classes: np.ndarray
    counts: np.ndarray
    map_counts: np.ndarray
    weights: np.ndarray
    proportions: np.ndarray
    users: np.ndarray
    users_se: np.ndarray
    producers: np.ndarray
    producers_se: np.ndarray
    sample_producers: np.ndarray
    estimated: np.ndarray
    estimated_se: np.ndarray
    conditional_kappa: np.ndarray
    overall: float
    overall_se: float
    sample_overall: float
    kappa: float
    area_kappa: float
    unsampled: float


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(a, np.float64) / b


def error_matrix(classes: np.ndarray, pairs: np.ndarray, pair_counts: np.ndarray) -> np.ndarray:
    """The int64 matrix n_ij of (reference, classification) `pairs` and their counts:
    row i the classification's class, column j the reference's, both in `classes`."""
    matrix = np.zeros((len(classes), len(classes)), np.int64)
    reference = np.searchsorted(classes, pairs[:, 0])
    classified = np.searchsorted(classes, pairs[:, 1])
    np.add.at(matrix, (classified, reference), pair_counts)
    return matrix


def _kappa(p: np.ndarray) -> float:
    """Kappa of a matrix of proportions summing to its total."""
    total = p.sum()
    chance = float((p.sum(axis=1) * p.sum(axis=0)).sum()) / total**2
    with np.errstate(divide="ignore", invalid="ignore"):
        return float((np.trace(p) / total - chance) / (1 - chance))


def assess(classes: np.ndarray, counts: np.ndarray, map_counts: np.ndarray) -> Assessment:
    """Every figure of an error matrix `counts` and the map's pixels per class (both in
    the order of `classes`)."""
    n = counts.astype(np.float64)
    big_n = map_counts.astype(np.float64)
    weights = big_n / big_n.sum()
    rows = n.sum(axis=1)
    sampled = rows > 0
    unsampled = float(weights[~sampled].sum())
    share = _divide(n, rows[:, None])  # n_ij / n_i.
    share[~sampled] = 0.0
    p = weights[:, None] * share
    p_rows, p_columns, diagonal = p.sum(axis=1), p.sum(axis=0), np.diag(p)
    users = _divide(np.diag(n), rows)
    variance_divisor = np.where(sampled, rows - 1, np.inf)  # unsampled strata add 0
    users_variance = _divide(users * (1 - users), rows - 1)
    producers = _divide(diagonal, p_columns)
    # Eq. 7: with N_i. the map's pixels and N_.j = sum_i N_i. n_ij / n_i.
    estimated_pixels = big_n @ share
    own = np.where(sampled, big_n**2 * (1 - producers) ** 2 * users_variance, 0.0)
    others = _divide(big_n[:, None] ** 2 * share * (1 - share), variance_divisor[:, None])
    others_sum = others.sum(axis=0) - np.diag(others)
    producers_variance = _divide(own + producers**2 * others_sum, estimated_pixels**2)
    terms = _divide(weights[:, None] * p - p**2, variance_divisor[:, None])
    overall_terms = _divide(weights**2 * users * (1 - users), variance_divisor)
    overall_terms[~sampled] = 0.0
    total = n.sum()
    return Assessment(
        classes=classes,
        counts=counts,
        map_counts=map_counts,
        weights=weights,
        proportions=p,
        users=users,
        users_se=np.sqrt(users_variance),
        producers=producers,
        producers_se=np.sqrt(producers_variance),
        sample_producers=_divide(np.diag(n), n.sum(axis=0)),
        estimated=p_columns,
        estimated_se=np.sqrt(terms.sum(axis=0)),
        conditional_kappa=_divide(diagonal - p_rows * p_columns, p_rows - p_rows * p_columns),
        overall=float(diagonal.sum()),
        overall_se=float(np.sqrt(overall_terms.sum())),
        sample_overall=float(np.trace(n) / total) if total else float("nan"),
        kappa=_kappa(n) if total else float("nan"),
        area_kappa=_kappa(p) if p.sum() else float("nan"),
        unsampled=unsampled,
    )


@dataclass(frozen=True)
class Regression:
    """The least-squares line Y = B0 + B1 X over weighted points, and its statistics."""

    r_squared: float
    correlation: float
    intercept: float
    slope: float
    intercept_interval: float
    slope_interval: float
    variance_y: float
    variance_intercept: float
    variance_slope: float


def regression(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> Regression:
    """The line of `y` on `x`, each point counted `weights` times (Remotior's: intervals
    are two standard errors, the residual variance has n - 2 degrees of freedom); a
    figure that cannot be computed (one distinct x, fewer than three points) is NaN."""
    x, y, w = (np.asarray(a, np.float64) for a in (x, y, weights))
    total = w.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        x_mean, y_mean = (x * w).sum() / total, (y * w).sum() / total
        s_xy = ((x - x_mean) * (y - y_mean) * w).sum()
        s_xx = ((x - x_mean) ** 2 * w).sum()
        s_yy = ((y - y_mean) ** 2 * w).sum()
        r = np.float64(s_xy) / np.sqrt(s_xx * s_yy)
        slope = np.float64(s_xy) / s_xx
        intercept = y_mean - slope * x_mean
        variance_y = (s_yy - slope * s_xy) / np.float64(total - 2)
        variance_slope = variance_y / s_xx
        variance_intercept = variance_y * (1 / total + x_mean**2 / s_xx)
        if not total > 2:
            variance_y = variance_slope = variance_intercept = np.float64("nan")
    return Regression(
        r_squared=float(r**2),
        correlation=float(r),
        intercept=float(intercept),
        slope=float(slope),
        intercept_interval=float(2 * np.sqrt(variance_intercept)),
        slope_interval=float(2 * np.sqrt(variance_slope)),
        variance_y=float(variance_y),
        variance_intercept=float(variance_intercept),
        variance_slope=float(variance_slope),
    )

"""Statistics of an output band, computed per tile and combined exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BandStatistics:
    """Count, extremes, mean and spread of the valid pixels of a band.

    Per-tile values combine with Chan's parallel formula, so the result does
    not depend on the tiling beyond floating-point rounding.
    """

    valid_pixel_count: int
    nodata_pixel_count: int
    minimum: float
    maximum: float
    mean: float
    sum_squared_deviations: float

    @classmethod
    def empty(cls) -> BandStatistics:
        return cls(0, 0, math.inf, -math.inf, 0.0, 0.0)

    @property
    def standard_deviation(self) -> float:
        if self.valid_pixel_count == 0:
            return 0.0
        return math.sqrt(self.sum_squared_deviations / self.valid_pixel_count)

    def combine(self, other: BandStatistics) -> BandStatistics:
        n = self.valid_pixel_count + other.valid_pixel_count
        if n == 0:
            return BandStatistics(
                0, self.nodata_pixel_count + other.nodata_pixel_count, math.inf, -math.inf, 0, 0
            )
        delta = other.mean - self.mean
        mean = self.mean + delta * other.valid_pixel_count / n
        m2 = (
            self.sum_squared_deviations
            + other.sum_squared_deviations
            + delta * delta * self.valid_pixel_count * other.valid_pixel_count / n
        )
        return BandStatistics(
            n,
            self.nodata_pixel_count + other.nodata_pixel_count,
            min(self.minimum, other.minimum),
            max(self.maximum, other.maximum),
            mean,
            m2,
        )

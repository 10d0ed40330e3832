"""Population priors for the body fit: anny's calibrated adult phenotype distribution.

One image cannot tell a tall person far away from a short one nearby: without depth or a known
floor, the body's size, and with it the distance, is only known as well as people's sizes are.
anny ships age-conditioned Beta distributions of its phenotypes per sex, calibrated to WHO height
data (`anny.shape_distribution.SimpleShapeDistribution`); `adult_phenotype_prior` summarises them
for adults as one Gaussian per phenotype, and `anny_adult_population` measures the stature spread
they imply, which the fit reports as the relative uncertainty of an image-only distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ADULT_AGE_YEARS = (18.0, 70.0)
"""Morphological age range (years, uniform) of the adult prior: the people a robot meets at work."""


@dataclass(frozen=True)
class PhenotypePrior:
    """Independent Gaussians over anny phenotypes (values in [0, 1]).

    Attributes:
        labels: phenotype names in anny's order.
        mean, sd: `[S]` float32 moments of the population.
    """

    labels: tuple[str, ...]
    mean: torch.Tensor
    sd: torch.Tensor

    def shifted(self, label: str, sds: float) -> torch.Tensor:
        """`[1, S]` the mean with phenotype `label` moved by `sds` standard deviations."""
        values = self.mean.clone()
        i = self.labels.index(label)
        values[i] = (values[i] + sds * self.sd[i]).clamp(0.0, 1.0)
        return values[None]


def adult_phenotype_prior(anny_model, age_years: tuple[float, float] = ADULT_AGE_YEARS, ages: int = 64) -> PhenotypePrior:
    """Moments of anny's calibrated phenotype distribution for adults.

    The population: morphological age uniform in `age_years` (integrated on `ages` grid points),
    gender uniform in [0, 1] with anny's male (<= 0.5) / female conditional distributions of
    height, weight, muscle and proportions; each phenotype's mean and standard deviation over
    that mixture.

    Args:
        anny_model: an `anny.Anny` (its phenotype labels, dtype and calibration data).
    """
    from anny.shape_distribution import SimpleShapeDistribution

    dist = SimpleShapeDistribution(anny_model).to(torch.float64)
    years = torch.linspace(age_years[0], age_years[1], ages, dtype=torch.float64)
    age = dist.morphological_age_mapping.morphological_to_anny_age(years).clamp(0.0, 1.0)  # [A]
    moments = {"gender": (torch.tensor(0.5), torch.tensor(1.0 / 12.0)), "age": (age.mean(), age.var(unbiased=False))}
    for name in ("height", "weight", "muscle", "proportions"):
        means, second = [], []
        for sex in ("boys", "girls"):
            a, b = getattr(dist, f"{sex}_conditional_{name}_distribution").get_distribution_params(age)
            m = a / (a + b)
            means.append(m)
            second.append(a * b / ((a + b) ** 2 * (a + b + 1)) + m**2)
        mean = torch.cat(means).mean()
        moments[name] = (mean, torch.cat(second).mean() - mean**2)
    labels = tuple(anny_model.phenotype_labels)
    mean = torch.stack([moments[k][0] for k in labels]).float()
    sd = torch.stack([moments[k][1] for k in labels]).clamp(min=1e-6).sqrt().float()
    return PhenotypePrior(labels, mean, sd)


@dataclass(frozen=True)
class ShapePopulation:
    """The adult population of a body model's shapes.

    Attributes:
        prior: the population's phenotype distribution.
        stature_sd: relative standard deviation of standing height over the population (a
            fraction): a fit whose size is a guess is as far off in distance as the person is off
            the population's mean stature.
    """

    prior: PhenotypePrior
    stature_sd: float


def anny_adult_population(body) -> ShapePopulation:
    """`adult_phenotype_prior` for an `AnnyBody`, with its stature spread measured on the model.

    The stature spread combines the effects on standing height of the phenotypes that change it
    (gender, height, proportions; central differences of one standard deviation around the mean,
    rest pose) as independent contributions.
    """
    prior = adult_phenotype_prior(body.anny)
    rest = body.rest_params()

    def stature(phenotypes: torch.Tensor) -> float:
        shape = body.shape_from_phenotypes(dict(zip(prior.labels, phenotypes[0].tolist())))
        with torch.no_grad():
            y = body(type(rest)(rest.global_orient, rest.transl, rest.pose, shape)).vertices[0, :, 1]
        return float(y.max() - y.min())

    spread = [(stature(prior.shifted(k, 1.0)) - stature(prior.shifted(k, -1.0))) / 2 for k in ("gender", "height", "proportions")]
    sd = float(torch.tensor(spread).square().sum().sqrt()) / stature(prior.mean[None])
    return ShapePopulation(prior, sd)

"""IQMs that report the outputs of the shipped classifiers (:mod:`detectors.classifiers`).

The models run in the pipeline (detectors: weights, I/O); these functions only pick their outputs from the
``classifier_outputs`` input, so that they are documented, registered and scored like every other IQM.
The classifiers were trained on simulated chest CT (see the weights manifest for the data and the held-out
accuracy), so these IQMs are registered for chest scans only.
"""

from __future__ import annotations

from metrics.registry import register_iqm

_MODEL = ("logistic/linear models on image features (ln global noise index, WED, ln pixel, ln slice, lag-1 noise "
          "autocorrelation, ln residual noise SD) trained on simulated chest CT: detectors/classifiers.py")


@register_iqm(
    unit="probability", direction="closer_to_target", regions=("chest",),
    formula="P(sharp) = 1 / (1 + exp(-(b0 + b . z))), z = standardised (noise_rho1, ln pixel mm); " + _MODEL,
    reference="Chest CT-IQA window task (Xun et al.); noise texture vs kernel: Boedeker et al., Phys Med Biol 2007",
)
def kernel_prob_sharp(classifier_outputs):
    """Probability that the series is a sharp (lung/bone) rather than a smooth (soft-tissue) reconstruction.

    Target depends on the series' purpose: near 0 for a mediastinal series, near 1 for a lung series."""
    return classifier_outputs.get("kernel_prob_sharp")


@register_iqm(
    unit="probability", direction="lower_is_better", regions=("chest",),
    formula="P(30 mAs | y) with equal priors, y = predicted ln effective mAs, P ~ N(y; ln 30 or ln 50, sd_resid); "
            + _MODEL,
    reference="Chest CT-IQA dose task, 30 vs 50 mAs (Xun et al.); noise ~ mAs^-1/2 (Brooks & Di Chiro 1976)",
)
def dose_prob_low_30mas(classifier_outputs):
    """Probability that the scan is the 30 mAs rather than the 50 mAs acquisition of the same patient size
    (lower dose, noisier image)."""
    return classifier_outputs.get("dose_prob_low_30mas")


@register_iqm(
    unit="mAs", direction="closer_to_target", regions=("chest",),
    formula="exp(b0 + b . x): linear regression of ln(mAs x dose fraction) on the image features; " + _MODEL,
    reference="AAPM TG-220 (WED); noise ~ mAs^-1/2 exp(mu WED / 2) (Brooks & Di Chiro 1976)",
)
def estimated_effective_mas(classifier_outputs):
    """Effective tube current-time product that the image noise implies, at the simulator's scanner
    calibration (a relative dose estimate when dose tags are missing; not a measured dose)."""
    return classifier_outputs.get("estimated_effective_mas")


@register_iqm(
    unit="%", direction="higher_is_better", regions=("chest",),
    formula="sum_k P(level k) x level k over the Noise2Quality levels 5, 10, 25, 50, 75 % of 100 mAs; " + _MODEL,
    reference="Noise2Quality dose levels (Haque et al.)",
)
def dose5_expected_pct(classifier_outputs):
    """Expected Noise2Quality dose level (percent of a 100 mAs full dose) from the five-class dose model."""
    return classifier_outputs.get("dose5_expected_pct")

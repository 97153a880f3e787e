"""IQMs that report the outputs of the shipped classifiers (:mod:`detectors.classifiers`) and learned networks
(:mod:`detectors.chest_iqa`, :mod:`detectors.tfkt`, :mod:`detectors.noise2quality`, :mod:`detectors.yolo_detect`;
the networks run by default through ONNX Runtime, and not with ``qc assess --no-networks``).

The models run in the pipeline (detectors: weights, I/O); these functions only pick their outputs from the
``classifier_outputs`` input, so that they are documented, registered and scored like every other IQM.
The classifiers were trained on simulated chest CT (see the weights manifest for the data and the held-out
accuracy), so these IQMs are registered for chest scans only; the TFKT perceptual score is registered for head and
chest (it was trained on both), and so are the Noise2Quality IQMs (:mod:`detectors.noise2quality`).
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


# ------------------------------------------------------------------------ Chest CT-IQA 3-D VGG (issue 9)
_VGG = ("Chest CT-IQA 3-D VGG at CPU size (detectors/chest_iqa.py): 4 central body slices, 96 x 96 crop at the body "
        "centroid + fixed high-pass channels + ln WED, ln pixel, ln slice; shipped weights chest_iqa.safetensors")


@register_iqm(
    unit="probability", direction="closer_to_target", regions=("chest",),
    formula="softmax(window head)[lung]; " + _VGG,
    reference="Xun et al., Chest CT-IQA: window classification (lung vs soft-tissue reconstruction)",
)
def chest_iqa_window_prob_lung(classifier_outputs):
    """Chest CT-IQA network's probability that the series is a lung (sharp) rather than a soft-tissue
    reconstruction; compare with ``kernel_prob_sharp`` from the explicit-feature classifier."""
    return classifier_outputs.get("chest_iqa_window_prob_lung")


@register_iqm(
    unit="probability", direction="lower_is_better", regions=("chest",),
    formula="softmax(dose head)[30 mAs]; " + _VGG,
    reference="Xun et al., Chest CT-IQA: dose classification (30 vs 50 mAs)",
)
def chest_iqa_dose_prob_low(classifier_outputs):
    """Chest CT-IQA network's probability that the scan is the 30 mAs rather than the 50 mAs acquisition
    (compare with ``dose_prob_low_30mas``)."""
    return classifier_outputs.get("chest_iqa_dose_prob_low")


@register_iqm(
    unit="1", direction="higher_is_better", regions=("chest",),
    formula="exp(SNR head x sd + mean) (the head regresses standardised ln SNR, trained on snr_subvolume_mean); " + _VGG,
    reference="Xun et al., Chest CT-IQA: SNR regression (mean/SD over sub-volumes, averaged)",
)
def chest_iqa_snr(classifier_outputs):
    """Chest CT-IQA network's estimate of the sub-volume SNR (``snr_subvolume_mean``) from the central slab."""
    return classifier_outputs.get("chest_iqa_snr")


@register_iqm(
    unit="1", direction="lower_is_better", regions=("chest",),
    formula="BRISQUE head x sd + mean (trained on brisque_soft_tissue); " + _VGG,
    reference="Xun et al., Chest CT-IQA: BRISQUE regression; Mittal et al., IEEE TIP 2012 (BRISQUE)",
)
def chest_iqa_brisque(classifier_outputs):
    """Chest CT-IQA network's estimate of the soft-tissue BRISQUE score (``brisque_soft_tissue``)."""
    return classifier_outputs.get("chest_iqa_brisque")


# ------------------------------------------------------------------------------ TFKT perceptual score (issue 9)
@register_iqm(
    unit="score 0-4", direction="higher_is_better", regions=("head", "chest"),
    formula="mean over 12 body slices of 4 sigmoid(head(CLS)) of the TFKT hybrid CNN-transformer; slice input "
            "v = clip((HU + 1024) / 1400, 0, 1) at 512 x 512 (LDCTIQA normalisation); shipped weights tfkt.safetensors "
            "fine-tuned on a simulated LDCTIQA-format set (detectors/tfkt.py)",
    reference="Rifa et al., TFKT: task-focused knowledge transfer for CT perceptual IQA (J Med Imaging 12(5) 051805, "
              "2025; LDCTIQA challenge, MICCAI 2023, Lee et al. Med Image Anal 2025)",
)
def tfkt_quality_score(classifier_outputs):
    """Perceptual image quality on the LDCTIQA radiologists' 0-4 scale (0 bad ... 4 excellent) predicted by the
    TFKT network: the mean slice score over 12 evenly spaced body slices. Not measured with
    ``qc assess --no-networks`` or when the weights are missing."""
    return classifier_outputs.get("tfkt_quality_score")


# ------------------------------------------------------------------------------ Noise2Quality (issue 9)
_N2Q = ("Noise2Quality U-Net at CPU size (detectors/noise2quality.py): 3 central body slices, window W400/L40 -> "
        "256 x 256, input (slice, high-pass); shipped weights noise2quality.safetensors trained on simulated chest and "
        "head slices with 5 inserted-noise dose levels")


@register_iqm(
    unit="1", direction="higher_is_better", regions=("head", "chest"),
    formula="mean over body pixels of the 3 central body slices of the predicted SSIM map S_hat(x); the network is "
            "trained on S(x) = SSIM(full-dose, low-dose)(x), 11 x 11 Gaussian window sigma 1.5, data range = the "
            "400 HU display window; " + _N2Q,
    reference="Haque, Wang, Imran: Noise2Quality, non-reference pixel-wise assessment of low dose CT image quality, "
              "SPIE Medical Imaging 2022 (12035); SSIM: Wang et al., IEEE TIP 2004",
)
def n2q_mean_ssim(classifier_outputs):
    """Mean SSIM, inside the body, between this scan and its routine full-dose equivalent as predicted by the
    Noise2Quality network without any reference (1 = indistinguishable from the full dose in the soft-tissue
    window). Not measured with ``qc assess --no-networks`` or when the weights are missing."""
    return classifier_outputs.get("n2q_mean_ssim")


@register_iqm(
    unit="%", direction="higher_is_better", regions=("head", "chest"),
    formula="sum_k P(level k) x level k, levels 5, 10, 25, 50, 75 % of the routine full dose, P = softmax of the "
            "dose head averaged over the 3 central body slices; " + _N2Q,
    reference="Haque, Wang, Imran: Noise2Quality (SPIE Medical Imaging 2022): self-supervised dose-level auxiliary task",
)
def n2q_dose_level_pct(classifier_outputs):
    """Expected dose level (percent of a routine, automatic-exposure-controlled full dose) predicted by the
    Noise2Quality network's auxiliary dose head. Not measured with ``qc assess --no-networks``."""
    return classifier_outputs.get("n2q_dose_level_pct")


# ------------------------------------------------------------------------------ YOLO landmarks and artifacts (issue 6)
_YOLO_LM = ("YOLO (yolo11n architecture, width 0.125, trained on simulated scans: detectors/yolo_detect.py) on the "
            "region's projection image (head sagittal at 1 mm/px, chest coronal at 2 mm/px: DRR, MIP and mean HU "
            "channels); a landmark's z = its most confident box's centre row; not measured when its confidence < "
            "0.25 (the landmark is probably outside the scan)")
_YOLO_ART = ("mean over the two models of the artifact ensemble of the max over <= 24 evenly spaced axial slices "
             "(plus every slice with metal > 2500 HU) of the YOLO box confidence of the class (yolo11n architecture, "
             "width 0.125, trained on the simulator's projection-model artifacts: detectors/yolo_detect.py); input "
             "channels: window -500..700 HU, the polar ring residual's z-score plus the metal streak coherence, "
             "air window")


@register_iqm(
    unit="mm", direction="closer_to_target", regions=("head",),
    formula="z(top of the scan) - z(vertex), patient z (superior +); " + _YOLO_LM,
    reference="ACR CT accreditation head protocol: scan from the skull base to the vertex; AAPM routine head CT "
              "protocols (coverage); over-range adds dose (ICRP 102)",
)
def yolo_vertex_margin_mm(classifier_outputs):
    """How far the scan reaches above the detected vertex (skull top): ~0-10 mm is complete coverage without
    over-scanning, negative means the vertex is cut off, tens of mm are dose spent on air."""
    return classifier_outputs.get("yolo_vertex_margin_mm")


@register_iqm(
    unit="mm", direction="closer_to_target", regions=("head",),
    formula="z(foramen magnum) - z(bottom of the scan); " + _YOLO_LM,
    reference="ACR CT accreditation head protocol (skull base to vertex); AAPM routine head CT protocols",
)
def yolo_skull_base_margin_mm(classifier_outputs):
    """How far the scan reaches below the detected foramen magnum (skull base): a routine head needs the whole
    posterior fossa (>= 0 mm); much more is neck dose."""
    return classifier_outputs.get("yolo_skull_base_margin_mm")


@register_iqm(
    unit="mm", direction="closer_to_target", regions=("chest",),
    formula="z(top of the scan) - z(lung apex; the mean of both apices' boxes when both are found); " + _YOLO_LM,
    reference="ACR-STR practice parameter for chest CT (lung apices to the costophrenic recesses); "
              "over-range adds thyroid dose (ICRP 102)",
)
def yolo_lung_apex_margin_mm(classifier_outputs):
    """How far the scan reaches above the detected lung apices: >= 0 mm is needed to see the apices whole; tens
    of mm irradiate the thyroid for nothing."""
    return classifier_outputs.get("yolo_lung_apex_margin_mm")


@register_iqm(
    unit="mm", direction="closer_to_target", regions=("chest",),
    formula="z(costophrenic angles; mean of both sides' boxes) - z(bottom of the scan); " + _YOLO_LM,
    reference="ACR-STR practice parameter for chest CT (lung apices to the costophrenic recesses)",
)
def yolo_costophrenic_margin_mm(classifier_outputs):
    """How far the scan reaches below the detected costophrenic angles (the lowest lung recesses): >= 0 mm is
    needed to cover the lung bases; much more is abdominal dose."""
    return classifier_outputs.get("yolo_costophrenic_margin_mm")


@register_iqm(
    unit="probability", direction="lower_is_better", regions=("head", "chest"),
    formula="metal-streak class; " + _YOLO_ART,
    reference="Barrett & Keat, Artifacts in CT: recognition and avoidance (RadioGraphics 2004)",
)
def yolo_metal_streak_score(classifier_outputs):
    """Detector confidence that metal streak artifacts are present on some slice (0..1). Complements the explicit
    streak_index_hu; see the weights manifest for its held-out AUC per region."""
    return classifier_outputs.get("yolo_metal_streak_score")


@register_iqm(
    unit="probability", direction="lower_is_better", regions=("head", "chest"),
    formula="motion class; " + _YOLO_ART,
    reference="Barrett & Keat, Artifacts in CT: recognition and avoidance (RadioGraphics 2004)",
)
def yolo_motion_score(classifier_outputs):
    """Detector confidence that patient-motion artifacts (doubled edges, streaks from inconsistent views) are
    present on some slice (0..1). Complements the explicit motion_index_hu."""
    return classifier_outputs.get("yolo_motion_score")


@register_iqm(
    unit="probability", direction="lower_is_better", regions=("head", "chest"),
    formula="ring class; " + _YOLO_ART,
    reference="Barrett & Keat, Artifacts in CT: recognition and avoidance (RadioGraphics 2004)",
)
def yolo_ring_score(classifier_outputs):
    """Detector confidence that ring artifacts (a miscalibrated detector channel) are present on some slice
    (0..1). Its input includes the polar residual the explicit ring_index_hu measures, so the two are not
    independent."""
    return classifier_outputs.get("yolo_ring_score")

"""`assess`: load -> masks and region -> IQMs -> scores. The same function is the Python API and the CLI."""

from __future__ import annotations

import platform
import time

import numpy as np

from qc.errors import QCInputError, UnsupportedRegionError
from qc.io import Scan, load_scan
from qc.results import Assessment, IQMResult

REGIONS = ("auto", "head", "chest")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    import qc

    out = {"ctqc": qc.__version__, "python": platform.python_version(), "segmenter": "classical-1"}
    for pkg in ("numpy", "scipy", "SimpleITK", "pydicom"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def isocenter_index(scan: Scan) -> tuple[float, float]:
    """(x, y) index coordinates of the isocentre: DataCollectionCenterPatient if recorded, else the
    centre of the reconstructed field of view (FOVCenterLPS)."""
    meta = scan.metadata
    p = meta.get("DataCollectionCenterPatient") or meta.get("FOVCenterLPS")
    if p is None:
        return ((scan.shape[2] - 1) / 2.0, (scan.shape[1] - 1) / 2.0)
    m = np.asarray(scan.direction, dtype=float) @ np.diag(list(reversed(scan.spacing)))
    phys = np.array([float(p[0]), float(p[1]), scan.origin[2]]) - np.asarray(scan.origin)
    idx = np.linalg.solve(m, phys)
    return float(idx[0]), float(idx[1])


SEGMENTERS = ("auto", "classical", "monai", "nnunet:MODEL_DIR", "totalsegmentator")


def parse_segmenter(segmenter: str) -> tuple[str, str | None]:
    """('auto' | 'classical' | 'monai' | 'nnunet' | 'totalsegmentator', model folder or None); QCInputError
    otherwise."""
    segmenter = str(segmenter)
    if segmenter in ("auto", "classical", "monai", "totalsegmentator"):
        return segmenter, None
    if segmenter.startswith("nnunet:") and segmenter[len("nnunet:"):].strip():
        return "nnunet", segmenter[len("nnunet:"):]
    if segmenter.startswith("nnunet"):
        raise QCInputError("segmenter nnunet needs the trained model folder: --segmenter nnunet:MODEL_DIR (the folder "
                           "nnUNetv2_train writes: dataset.json, plans.json, fold_X/checkpoint_final.pth)")
    raise QCInputError(f"segmenter must be one of {', '.join(SEGMENTERS)}, not {segmenter!r}")


def _with_classical_fallback(scan: Scan, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fill the masks the metrics need (body, lungs, brain) that a backend does not provide with classical ones."""
    from detectors import classical

    needed = [m for m in ("body_mask", "lung_mask", "intracranial_mask") if m not in masks]
    if not needed:
        return masks
    cl = classical.segment(scan.hu, scan.spacing, scan.fov)
    return {**{m: cl[m] for m in needed}, **masks}


#: 'auto' uses the network only on scans at least this long (z): it was trained on 96-128 mm patches, and on a
#: few slices its context is mostly zero padding (a single head slice lost its cranial cavity).
MIN_NETWORK_Z_MM = 40.0


def resolve_segmenter(segmenter: str, scan: Scan | None = None) -> str:
    """'auto' -> 'monai' when the shipped head and chest networks' ONNX exports verify and onnxruntime is installed
    (assessment then never imports torch) and the scan covers at least :data:`MIN_NETWORK_Z_MM`, else 'classical'.
    Any other value is returned as given."""
    if parse_segmenter(segmenter)[0] != "auto":
        return segmenter
    if scan is not None and scan.shape[0] * float(scan.spacing[0]) < MIN_NETWORK_Z_MM:
        return "classical"
    from detectors import runtime, segmentation

    ok = all(runtime.shipped_onnx(segmentation.model_name(r)) is not None for r in ("head", "chest"))
    return "monai" if ok else "classical"


def compute_masks(scan: Scan, segmenter: str = "classical", region: str = "auto",
                  outputs=None, coarse=None) -> dict[str, np.ndarray]:
    """Anatomy masks. ``classical`` (default): HU thresholds + morphology (detectors/classical.py).
    ``monai``: the shipped network of the region (detectors/segmentation.py); with region 'auto' the region is
    first decided on classical masks of a 4 mm coarse grid, and a scan that is neither head nor chest gets the
    classical masks. ``nnunet:MODEL_DIR``: a user's trained nnU-Net v2 model folder, labels mapped by name
    (detectors/nnunet_backend.py). ``totalsegmentator``: TotalSegmentator's models when already on disk
    (detectors/totalseg_backend.py; never downloaded). For the last two, body / lung / brain masks the model does
    not provide are the classical ones. ``outputs``: the network masks to build (default all; body, lungs and
    brain are always built). ``coarse``: the chest block grid of :func:`detectors.segmentation.coarse_block` when
    the caller already has it (``monai`` reuses it instead of averaging the volume again)."""
    from detectors import classical

    kind, model_dir = parse_segmenter(resolve_segmenter(segmenter, scan))
    if kind == "classical":
        return classical.segment(scan.hu, scan.spacing, scan.fov)
    if kind == "nnunet":
        from detectors import nnunet_backend

        return _with_classical_fallback(scan, nnunet_backend.segment(scan.hu, scan.spacing, model_dir))
    if kind == "totalsegmentator":
        from detectors import totalseg_backend

        return _with_classical_fallback(scan, totalseg_backend.segment(scan.hu, scan.spacing))
    from detectors import segmentation

    if region == "auto":
        if coarse is None:
            coarse = segmentation.coarse_block(scan.hu, scan.spacing, "chest", scan.fov)
        region = segmentation.decide_region(scan.hu, scan.spacing, scan.fov, coarse=coarse).region
    if region not in ("head", "chest"):  # no network for it
        return classical.segment(scan.hu, scan.spacing, scan.fov)
    return segmentation.segment(scan.hu, scan.spacing, region, scan.fov, outputs=outputs, coarse=coarse)


def mask_inputs() -> set[str]:
    """The masks some registered IQM reads (``*_mask`` inputs), plus body, lungs and brain: what assessment keeps.
    A network's other masks (skull, lens, aorta, ...) would each cost a full-size bool volume for nothing."""
    from metrics.registry import get_registry

    names = {"body_mask", "lung_mask", "intracranial_mask"}
    for spec in get_registry().values():
        names.update(i for i in spec.inputs if i.endswith("_mask"))
    return names


def classifier_outputs(scan: Scan, available: dict, values: dict) -> tuple[dict, str]:
    """Outputs of the shipped kernel/dose classifiers (detectors.classifiers) and what produced them
    ('classifiers-1 sha256:<12 hex>', or 'not trained' when no weights are shipped)."""
    from detectors import classifiers, weights

    models = classifiers.shipped_models()
    if models is None:
        return classifiers.predict(None, None), "not trained (run `qc train classifiers`)"
    feats = classifiers.features_from(scan.hu, scan.spacing, available["body_mask"],
                                      values.get("global_noise_index_hu"), values.get("water_equivalent_diameter_mm"))
    return classifiers.predict(models, feats), weights.version_label("classifiers")


#: The learned networks run by ``assess(networks=True)``: module in detectors/, regions it was trained on, and
#: {classifier_outputs key read by its IQMs (metrics/learned.py): key of the module's predict_volume result}.
NETWORKS = (
    ("chest_iqa", ("chest",), {"chest_iqa_window_prob_lung": "window_prob_lung", "chest_iqa_dose_prob_low": "dose_prob_low",
                               "chest_iqa_snr": "snr_pred", "chest_iqa_brisque": "brisque_pred"}),
    ("tfkt", ("head", "chest"), {"tfkt_quality_score": "tfkt_quality_score"}),
    ("noise2quality", ("head", "chest"), {"n2q_mean_ssim": "mean_ssim", "n2q_dose_level_pct": "dose_level_pct"}),
)
#: Landmark margins reported as IQMs: region -> {IQM key: (landmark, 'top' | 'bottom')}. 'top': z(scan top) -
#: z(landmark); 'bottom': z(landmark) - z(scan bottom) (patient z, superior +; the scan's edges are its first and
#: last slice centres +- half the slice spacing).
LANDMARK_MARGINS = {
    "head": {"yolo_vertex_margin_mm": ("vertex", "top"), "yolo_skull_base_margin_mm": ("foramen_magnum", "bottom")},
    "chest": {"yolo_lung_apex_margin_mm": ("lung_apex", "top"),
              "yolo_costophrenic_margin_mm": ("costophrenic_angle", "bottom")},
}
#: A landmark box less confident than this is taken as "not in the scan" (its margin is not measured).
LANDMARK_MIN_CONFIDENCE = 0.25


def _model_version(name: str, model) -> str:
    from detectors import runtime, weights

    return runtime.version(name) if isinstance(model, runtime.OnnxNet) else weights.version_label(name)


def detector_outputs(scan: Scan, region: str) -> tuple[dict, dict[str, str]]:
    """YOLO landmark margins (:data:`LANDMARK_MARGINS`) and artifact scores of the scan, and the versions of the
    detectors that ran (detectors/yolo_detect.py)."""
    from detectors import yolo_detect as yd

    out: dict = {}
    versions: dict[str, str] = {}
    net = yd.default_model(region)
    name = yd.WEIGHTS_NAME.format(model=region)
    if net is None:
        versions[name] = "not available (weights missing or not verified)"
    elif scan.shape[0] < 2:  # a projection image needs a volume
        out.update(dict.fromkeys(LANDMARK_MARGINS[region]))
        versions[name] = f"{_model_version(name, net)}; not run on a single slice"
    else:
        found = yd.detect_landmarks_scan(scan, region, net=net)
        z = scan.z_positions_mm()
        half = 0.5 * float(scan.spacing[0])  # the scan covers its first/last slice centre +- half a slice
        top, bottom = float(np.max(z)) + half, float(np.min(z)) - half
        for key, (landmark, edge) in LANDMARK_MARGINS[region].items():
            lm = found.get(landmark) or {}
            if lm.get("z_mm") is None or (lm.get("confidence") or 0.0) < LANDMARK_MIN_CONFIDENCE:
                out[key] = None
            else:
                out[key] = top - lm["z_mm"] if edge == "top" else lm["z_mm"] - bottom
        out["yolo_landmarks"] = found
        versions[name] = _model_version(name, net)
    members = [(yd.WEIGHTS_NAME.format(model=m), yd.default_model(m)) for m in yd.ARTIFACT_MODELS]
    for name, net in members:
        versions[name] = "not available (weights missing or not verified)" if net is None else _model_version(name, net)
    nets = [net for _name, net in members if net is not None]
    if nets:  # the ensemble's mean score (yolo_detect.ARTIFACT_MODELS); a missing member is named in versions
        art = yd.detect_artifacts(scan.hu, scan.spacing[2], net=nets)
        out.update({f"yolo_{'metal_streak' if a == 'metal' else a}_score": v["score"] for a, v in art.items()})
    return out, versions


def network_outputs(scan: Scan, region: str) -> tuple[dict, dict[str, str]]:
    """Outputs of the shipped learned networks for the region, merged into ``classifier_outputs`` under
    ``<network>_<output>`` keys, and {network: version} for the JSON. Each runs from its ONNX export through ONNX
    Runtime when that verifies (no torch import), else as a torch module. A network whose weights are missing or
    fail verification is skipped and reported as such. Then the YOLO detectors (:func:`detector_outputs`)."""
    import importlib

    from detectors import runtime

    out: dict = {}
    versions: dict[str, str] = {}
    for module, regions, keys in NETWORKS:
        if region not in regions:
            continue
        net = importlib.import_module(f"detectors.{module}")
        model = runtime.default_model(net.WEIGHTS_NAME, net.shipped_model)
        if model is None:
            versions[net.WEIGHTS_NAME] = "not available (weights missing or not verified)"
            continue
        pred = net.predict_volume(scan.hu, scan.spacing, model)
        out.update({iqm_key: pred[key] for iqm_key, key in keys.items()})
        versions[net.WEIGHTS_NAME] = _model_version(net.WEIGHTS_NAME, model)
    det, det_versions = detector_outputs(scan, region)
    out.update(det)
    versions.update(det_versions)
    return out, versions


class _Background:
    """``fn(scan, region, ...)`` started in a daemon thread; :meth:`result` waits for it and re-raises its error."""

    def __init__(self, fn, scan, region, *args):
        import threading

        self.region = region
        self.seconds = 0.0
        self._out = self._exc = None

        def run():
            t = time.perf_counter()
            try:
                self._out = fn(scan, region, *args)
            except BaseException as exc:  # handed to the caller by result()
                self._exc = exc
            self.seconds = time.perf_counter() - t

        self._thread = threading.Thread(target=run, name=f"qc-{getattr(fn, '__name__', 'worker')}", daemon=True)
        self._thread.start()

    def result(self):
        self._thread.join()
        if self._exc is not None:
            raise self._exc
        return self._out


def region_version(decision) -> str:
    """What decided the body region: the trained model ('region-1 sha256:<12 hex>') or 'heuristic-1'."""
    if decision.probs is None:
        return "heuristic-1"
    from detectors import region, weights

    return weights.version_label(region.REGION_MODEL)


def segmenter_version(segmenter: str, region: str) -> str:
    """What produced the masks, for the JSON: 'classical-1' or 'monai <model version> sha256:<12 hex>' (+ the ONNX
    export's sha256 when ONNX Runtime ran it; for nnU-Net the model folder and checkpoint sha256, see
    detectors.nnunet_backend.model_version)."""
    segmenter = resolve_segmenter(segmenter)
    kind, model_dir = parse_segmenter(segmenter)
    if kind == "nnunet":
        from detectors import nnunet_backend

        return nnunet_backend.model_version(model_dir)
    if kind == "totalsegmentator":
        from detectors import totalseg_backend

        return totalseg_backend.version()
    if segmenter != "monai" or region not in ("head", "chest"):
        return "classical-1"
    from detectors import segmentation

    name = segmentation.model_name(region)
    return f"monai {_model_version(name, segmentation.default_model(region))}"


def assess(path_or_scan, region: str = "auto", config=None, series_uid: str | None = None,
           model=None, segmenter: str = "auto", networks: bool = True) -> Assessment:
    """Assess one CT scan (path to file/DICOM folder, or a loaded :class:`~qc.io.Scan`).

    region: 'auto' (heuristic), 'head' or 'chest'. config: path to a hierarchy YAML (default: the
    shipped one for the region). model: path to a fitted model JSON (``qc fit``); default: the config's
    rubric. segmenter: 'auto' (default: the shipped MONAI network through ONNX Runtime when its export verifies, else
    'classical'), 'classical', 'monai', 'nnunet:MODEL_DIR' or 'totalsegmentator' (see :func:`compute_masks`).
    networks: run the shipped learned networks and detectors (:func:`network_outputs`; default on). They run from
    ONNX exports through ONNX Runtime: torch is not imported (it alone costs ~0.5 GiB resident memory and 3-9 s
    here). Off, their IQMs are reported as not measured.
    Raises :class:`~qc.errors.QCInputError` for bad input.
    """
    from detectors.region import decide as decide_region
    from metrics.registry import get_registry
    from qc.config import load_config
    from regression.model import HierarchyModel

    if region not in REGIONS:
        raise UnsupportedRegionError(f"region '{region}' is not supported (choose head, chest or auto)")
    from qc.memory import return_large_arrays_to_the_system

    return_large_arrays_to_the_system()  # freed volume-sized temporaries go back to the system (peak RSS)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    scan = path_or_scan if isinstance(path_or_scan, Scan) else load_scan(path_or_scan, series_uid=series_uid)
    timings["load"] = time.perf_counter() - t0
    warnings = list(scan.warnings)

    t = time.perf_counter()
    segmenter = resolve_segmenter(segmenter, scan)
    seg_region, coarse = region, None
    if segmenter == "monai":
        from detectors import segmentation

        # the chest block grid: the 4 mm region heuristic reads it (auto, or the check of a forced region below)
        # and a chest's network reuses it
        coarse = segmentation.coarse_block(scan.hu, scan.spacing, "chest", scan.fov)
        if region == "auto":  # what compute_masks would decide, decided once here
            seg_region = segmentation.decide_region(scan.hu, scan.spacing, scan.fov, coarse=coarse).region
    masks = compute_masks(scan, segmenter, seg_region, outputs=mask_inputs(), coarse=coarse)
    # The learned networks read only the image: they run in a second thread while the IQMs are computed (numpy,
    # scipy and ONNX Runtime release the GIL; assessment has 2 cores). Not alongside the segmentation network: the
    # two transient peaks together broke the memory budget (4.03x int16; benchmarks/bench_memory.py).
    background = _Background(network_outputs, scan, seg_region) if networks and seg_region in ("head", "chest") else None
    decision = decide_region(scan.hu, scan.spacing, masks["body_mask"], masks["lung_mask"], masks["intracranial_mask"])
    timings["segment"] = time.perf_counter() - t
    if region == "auto":
        if decision.region not in ("head", "chest"):
            raise UnsupportedRegionError(
                f"region not supported: {decision.reason}; only head and chest CT are assessed "
                "(force one with --region head|chest)", scan.source or None)
        region = decision.region
    else:
        if segmenter == "monai":
            # the forced region's own network cannot contradict it: ask the classical 4 mm heuristic instead
            decision = segmentation.decide_region(scan.hu, scan.spacing, scan.fov, coarse=coarse)
        if decision.region != region:
            warnings.append(f"--region {region} given, but the heuristic says {decision.reason}")

    cfg = load_config(config if config is not None else region)
    if cfg.region != region:
        raise QCInputError(f"config is for {cfg.region}, scan assessed as {region}", config)
    if model is not None:
        from regression.fit import FittedModel, load_model

        scorer = FittedModel(load_model(model), cfg, str(model))
        model_info = {"kind": "fitted", "config": str(config or f"configs/{region}_ct.yaml"), "file": str(model),
                      "provenance": scorer.model.get("provenance", {})}
    else:
        scorer = HierarchyModel(cfg)
        model_info = {"kind": cfg.source.kind, "config": str(config or f"configs/{region}_ct.yaml"),
                      "version": cfg.version, "description": cfg.source.description}

    t = time.perf_counter()
    available = {
        "hu": scan.hu, "spacing": scan.spacing, "fov": scan.fov, "z_positions": scan.z_positions_mm(),
        "isocenter_xy": isocenter_index(scan), "metadata": scan.metadata, "region": region, **masks,
    }
    registry = get_registry()
    values: dict[str, float | None] = {}
    specs = [s for s in list(registry.values()) if region in s.regions]  # a snapshot: lazy imports may register more
    for spec in [s for s in specs if "classifier_outputs" not in s.inputs]:
        v = spec.compute(available)
        values[spec.name] = None if v is None or not np.isfinite(v) else float(v)
    timings["metrics"] = time.perf_counter() - t
    t = time.perf_counter()
    second = [s for s in specs if "classifier_outputs" in s.inputs]
    clf_version = None
    net_versions: dict[str, str] = {}
    if second:  # classifiers on the first pass's noise index and WED, then the IQMs that report them
        # the feature classifiers are chest-only; a head scan gets here only for the networks' IQMs (tfkt)
        available["classifier_outputs"], clf_version = (classifier_outputs(scan, available, values)
                                                         if region == "chest" else ({}, None))
        if networks:
            got = background.result() if background is not None and background.region == region else None
            if got is None:
                tn = time.perf_counter()
                got = network_outputs(scan, region)
                timings["networks"] = time.perf_counter() - tn
            else:
                timings["networks"] = background.seconds  # in the second thread, overlapping segment and metrics
            net_out, net_versions = got
            available["classifier_outputs"] = {**available["classifier_outputs"], **net_out}
        for spec in second:
            v = spec.compute(available)
            values[spec.name] = None if v is None or not np.isfinite(v) else float(v)
    timings["classifiers"] = time.perf_counter() - t

    overall, overall_terms, cats = scorer.score(values, {n: registry[n].unit for n in values})
    status = scorer.iqm_status(values)
    iqms = {
        n: IQMResult(name=n, value=v, unit=registry[n].unit, direction=registry[n].direction,
                     status=status.get(n, "info" if v is not None else "not_measured"),
                     description=registry[n].description, source=",".join(registry[n].inputs))
        for n, v in values.items()
    }
    for cname, cat in cats.items():
        for t_ in cat.terms:
            if t_.status == "fail":
                warnings.append(f"{cname}: {t_.item} fails ({t_.iqm} = {t_.value:.3g} {t_.unit})")
    timings["total"] = time.perf_counter() - t0
    meta = scan.metadata
    scan_info = {
        "shape_zyx": list(scan.shape), "spacing_zyx_mm": [round(s, 4) for s in scan.spacing],
        **{k: meta[k] for k in ("Manufacturer", "KVP", "ExposureMAs", "CTDIvol", "ConvolutionKernel", "SliceThickness",
                                "GantryTiltDeg", "WindowCenter", "WindowWidth", "BodyPartExamined",
                                "SeriesDescription", "ProtocolName", "StudyDate") if k in meta},
    }
    return Assessment(
        source=str(scan.source or (path_or_scan if not isinstance(path_or_scan, Scan) else "")),
        region=region, region_reason=decision.reason, region_probs=decision.probs, overall=overall, overall_intercept=cfg.overall.intercept,
        overall_terms=overall_terms, categories=cats, iqms=iqms,
        model=model_info,
        scan=scan_info, warnings=warnings, timings_s={k: round(v, 3) for k, v in timings.items()},
        versions={**_versions(), "segmenter": segmenter_version(segmenter, region), "region": region_version(decision),
                  **({"classifiers": clf_version} if clf_version else {}), **net_versions},
    )


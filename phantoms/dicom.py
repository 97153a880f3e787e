"""Write a :class:`qc.io.Scan` as a classic CT Image Storage DICOM series (one file per slice, int16,
RescaleIntercept -1024) with the acquisition tags the QC engine reads. Patient identity is a fixed
phantom name; UIDs are derived from the seed so the same seed gives the same series."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_dicom_series(scan, out_dir, seed: int = 0, study_date: str = "20260101", orientation=None,
                       positions=None, extra: dict | None = None) -> Path:
    """``orientation`` (6 floats) and ``positions`` (one xyz per slice) override the axial geometry, e.g. to
    write a gantry-tilted stack; ``extra`` sets further keywords on every slice (e.g. Modality='MR')."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = scan.metadata
    study_uid = generate_uid(entropy_srcs=[f"ctqc-study-{seed}-{scan.source}"])
    series_uid = generate_uid(entropy_srcs=[f"ctqc-series-{seed}-{scan.source}"])
    frame_uid = generate_uid(entropy_srcs=[f"ctqc-frame-{seed}-{scan.source}"])
    dz, dy, dx = scan.spacing
    stored = np.clip(np.rint(scan.hu + 1024.0), -32768, 32767).astype(np.int16)
    for k in range(scan.shape[0]):
        sop_uid = generate_uid(entropy_srcs=[f"ctqc-sop-{seed}-{scan.source}-{k}"])
        fm = FileMetaDataset()
        fm.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        fm.MediaStorageSOPInstanceUID = sop_uid
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(out / f"slice_{k:04d}.dcm"), {}, file_meta=fm, preamble=b"\0" * 128)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = "CT"
        ds.PatientName = "PHANTOM^CTQC"
        ds.PatientID = f"PHANTOM{seed}"
        ds.StudyDate = study_date
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        for kw in ("Manufacturer", "ManufacturerModelName", "BodyPartExamined", "SeriesDescription", "ProtocolName",
                   "ConvolutionKernel", "PatientPosition"):
            if kw in meta:
                setattr(ds, kw, str(meta[kw]))
        if "CTDIvol" in meta:  # FD (binary float), the others are decimal strings
            ds.CTDIvol = float(meta["CTDIvol"])
        for kw in ("KVP", "SliceThickness", "WindowCenter", "WindowWidth"):
            if kw in meta:
                setattr(ds, kw, f"{float(meta[kw]):.6g}")
        for kw in ("XRayTubeCurrent", "ExposureTime", "Exposure"):
            if kw in meta:
                setattr(ds, kw, int(round(float(meta[kw]))))
        ds.ImageOrientationPatient = [f"{v:.7f}" for v in (orientation if orientation is not None else [1, 0, 0, 0, 1, 0])]
        if positions is not None:
            ipp = [float(v) for v in positions[k]]
        else:
            ipp = [scan.origin[0], scan.origin[1], scan.origin[2] + k * dz]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.SliceLocation = f"{ipp[2]:.6f}"
        if extra:
            for kw, v in extra.items():
                setattr(ds, kw, v)
        ds.PixelSpacing = [f"{dy:.8g}", f"{dx:.8g}"]
        ds.Rows, ds.Columns = scan.shape[1], scan.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.PixelData = stored[k].tobytes()
        ds.save_as(out / f"slice_{k:04d}.dcm", enforce_file_format=True)
    return out

"""Protocol audit at scale: assess every CT in folders or a manifest on a Dask cluster, scan by scan into a store.

Flow (``run_audit``):

1. **Discover** (client, header-only). Folders are walked recursively: NIfTI/NRRD/MHA files are separate
   scans (source id ``sha256:<file content hash>``); every other file is tried as DICOM with pydicom
   ``stop_before_pixels`` and grouped by SeriesInstanceUID (source id ``dicom:<uid>``, path = the smallest
   folder holding the series). A manifest CSV gives one input per row in its ``path`` column (relative to
   the CSV's folder; a file or a DICOM folder) plus optional metadata columns: ``protocol``, ``scanner``,
   ``kernel``, ``kvp``, ``mas``, ``ctdivol``, ``study_date`` override the header values; DICOM keywords
   (``ProtocolName``, ``Manufacturer``...) fill header gaps; ``PatientID``/``patient_id``/``mrn``,
   ``StudyInstanceUID``/``study_uid`` and ``AccessionNumber`` are identifiers (hashed); other columns that
   name a patient, birth date or accession are dropped; the rest is kept as JSON in ``scans.extra``.
   Scouts/localizers, non-CT series (MR, SR, SEG...) and 8-bit images (label maps, masks) are **skipped**
   and recorded in ``errors`` with kind 'skipped'. A localizer image that shares the SeriesInstanceUID of
   tomographic images (some scanners do this, often as the series' first file) is left out of that series,
   with a warning, instead of getting the whole series skipped. A broken symbolic link is recorded as an
   error ('no such file or folder'); files that are neither images nor DICOM are counted, not recorded.
2. **Skip** inputs whose key (``<source id>@<model version>``, see :mod:`qc.store`) is already stored.
3. **Assess** on Dask distributed: a ``LocalCluster(n_workers=N, threads_per_worker=1, processes=True)``
   (N = CPU cores, at most one per scan) or an existing cluster (``scheduler='tcp://host:port'``; its workers
   need ctqc installed and must see the input paths, which are passed as absolute paths). One task
   per scan (:func:`assess_task` -> :func:`qc.pipeline.assess`; a DICOM series travels as the list of its files,
   so that a worker reads only those headers, not a whole flat folder's) returns plain dicts; results are collected
   with ``as_completed`` and each one is written to the store by the client immediately, in one
   transaction, so a crash never loses finished work. A scan that fails (bad input, an unexpected
   exception, a worker killed by it) is recorded in ``errors`` and the batch goes on. A scan whose worker
   process dies (killed, out of memory, a crash in native code) is retried once on a fresh worker; if that
   worker dies too, the scan is recorded in ``errors`` (kind 'error', "the worker assessing this scan died
   twice ...") and the batch goes on (LocalCluster: ``allowed-failures`` 1 and ``worker-saturation`` 1.0, so
   that a worker holds only the scan it is running and a death costs no other scan an attempt; an existing
   cluster given with ``scheduler`` keeps its own settings).

Patient identifiers (PatientID, StudyInstanceUID, AccessionNumber) are read on the client from the first
file of a series and stored only as salted sha256 hashes (originals only with ``keep_phi``); they are never
sent to the workers. Where inputs are (folder names often name the patient) is stored, logged and keyed as
``paths`` says: absolute (default), relative to the input given, or hashed (:class:`PathPolicy`).

Exit code of `qc audit`: 0 when the run completes, also when inputs failed (each is in ``errors``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from qc.errors import QCInputError
from qc.store import ScanRecord, Store, utc_now

#: default salt for identifier hashes; give your own (``--id-salt``) so that hashes cannot be matched
#: against other sites' stores.
DEFAULT_ID_SALT = "ctqc-audit-v1"
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: files never tried as DICOM while walking a folder
_NOT_DICOM_SUFFIXES = (".json", ".csv", ".tsv", ".txt", ".md", ".yaml", ".yml", ".py", ".png", ".jpg", ".jpeg",
                       ".html", ".pdf", ".raw", ".zraw", ".gz", ".zip", ".xlsx", ".parquet", ".duckdb", ".wal")
_DISCOVERY_TAGS = ["SeriesInstanceUID", "Modality", "ImageType", "SOPClassUID", "SeriesDescription"]
_OVERRIDE_COLUMNS = ("protocol", "scanner", "kernel", "kvp", "mas", "ctdivol", "study_date")
_ID_COLUMNS = {"patientid": "patient_id", "mrn": "patient_id", "studyinstanceuid": "study_uid", "studyuid": "study_uid",
               "accessionnumber": "accession_number", "accession": "accession_number"}
_PHI_WORDS = ("patient", "birth", "accession", "dob", "mrn")
#: how input locations are stored, logged and keyed (see :class:`PathPolicy`)
PATH_MODES = ("absolute", "relative", "hashed")


# ----------------------------------------------------------------------------------------------
# where inputs are: stored paths (folder names may identify a patient)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathPolicy:
    """How an input's location is written to the store (``scans.path``, ``errors.path``), to the progress lines
    and into keys. Folder and file names often identify patients (``/archive/DOE_JANE_1234/CT``), and DICOM UIDs
    can be looked up in a PACS; so:

    * ``absolute`` (default): the absolute path, SeriesInstanceUID in clear (``qc report --scan`` can reload the
      images for its views; keep such a store where the images are);
    * ``relative``: the path relative to the input it was found under (the folder given, or the manifest's
      folder); an input outside it (a manifest row pointing elsewhere) is stored as in ``hashed``. ``qc report
      --scan KEY --root DIR`` finds the images again;
    * ``hashed``: ``path-sha256:<salted hash of the absolute path>`` only, and the SeriesInstanceUID only as a
      salted hash inside the source id (``dicom-hashed:<hash>``); reports have no images.

    In every mode the source id of a missing or unreadable input is a salted hash of its path, and an error
    that names a file inside a series gives it relative to the series' folder (``relative``/``absolute``) or
    not at all (``hashed``). The salt is the audit's ``--id-salt``. A store keeps the mode it was written with
    (``store_meta.path_mode``); another mode on the same store is refused."""

    mode: str = "absolute"
    salt: str = DEFAULT_ID_SALT

    def __post_init__(self):
        if self.mode not in PATH_MODES:
            raise QCInputError(f"--paths must be one of {', '.join(PATH_MODES)}, not {self.mode!r}")

    def path(self, p: str, root: str | None = None) -> str:
        if self.mode == "absolute":
            return str(p)
        if self.mode == "relative" and root:
            rel = os.path.relpath(os.path.abspath(p), os.path.abspath(root))
            if rel != ".." and not rel.startswith(".." + os.sep):
                return Path(rel).as_posix()
        return "path-sha256:" + hash_id(os.path.abspath(p), self.salt)

    def source_id(self, sid: str) -> str:
        kind, _, rest = sid.partition(":")
        if kind in ("missing", "unreadable"):
            return f"{kind}:{hash_id(rest, self.salt)}"
        if self.mode == "hashed" and kind in ("dicom", "dicom-nouid"):
            return f"{kind}-hashed:{hash_id(rest, self.salt)}"
        return sid

    def series_uid(self, uid: str | None) -> str | None:
        return None if self.mode == "hashed" else uid

    def scrub(self, text: str, path: str, shown: str) -> str:
        """``text`` with the absolute ``path`` replaced by its stored form."""
        return text.replace(str(path), shown) if self.mode != "absolute" and path else text

    def file_in_series(self, name: str | None) -> str:
        return f" [file {name}]" if name and self.mode != "hashed" else ""


# ----------------------------------------------------------------------------------------------
# discovery
# ----------------------------------------------------------------------------------------------


@dataclass
class AuditJob:
    """One scan to assess. ``ids`` (raw identifiers) stay on the client; workers get path and series_uid only."""

    source_id: str
    path: str
    kind: str                          # 'dicom' (series in a folder or one DICOM file) | 'file'
    series_uid: str | None = None
    header: dict = field(default_factory=dict)     # DICOM keywords (no identifiers), from header/sidecar/manifest
    ids: dict = field(default_factory=dict)        # patient_id, study_uid, accession_number (raw)
    overrides: dict = field(default_factory=dict)  # manifest values for protocol, scanner, kernel, kvp, ...
    extra: dict = field(default_factory=dict)      # other manifest columns
    files: list[str] = field(default_factory=list)  # DICOM: the series' files (the worker reads only these)
    notes: list[str] = field(default_factory=list)  # discovery remarks added to the stored warnings
    root: str | None = None                         # the input (folder, manifest's folder) it was found under


@dataclass
class Refused:
    """An input that is not assessed: kind 'skipped' (not a tomographic CT) or 'error' (unreadable, missing)."""

    source_id: str
    path: str
    reason: str
    error_type: str
    kind: str = "skipped"
    root: str | None = None


@dataclass
class Discovery:
    jobs: list[AuditJob] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    n_ignored: int = 0                  # files that are neither images nor DICOM
    dropped_columns: list[str] = field(default_factory=list)


def _is_image(name: str) -> bool:
    n = name.lower()
    return any(n.endswith(s) for s in IMAGE_SUFFIXES)


def file_sha256(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def hash_id(value, salt: str) -> str | None:
    """Salted sha256 (hex) of an identifier; None for a missing/empty one."""
    if value is None or str(value).strip() == "":
        return None
    return hashlib.sha256(f"{salt}\x1f{str(value).strip()}".encode()).hexdigest()


def model_version(model=None) -> str:
    """``ctqc-<version>+rubric`` or ``ctqc-<version>+model-<sha256[:16] of the model JSON>``."""
    import qc

    if model is None:
        return f"ctqc-{qc.__version__}+rubric"
    p = Path(model)
    if not p.is_file():
        raise QCInputError("no such model file", p)
    return f"ctqc-{qc.__version__}+model-{file_sha256(p)[:16]}"


def _read_dicom(path: Path, tags: list[str] | None = None):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
    except Exception:
        return None


def _series_header(path: Path) -> tuple[dict, dict]:
    """(metadata without identifiers, raw identifiers) from one DICOM file's full header."""
    from qc.io import _dicom_metadata

    ds = _read_dicom(path)
    if ds is None:
        return {}, {}
    meta = _dicom_metadata(ds)
    for kw in ("ManufacturerModelName", "StudyDescription"):
        if ds.get(kw) not in (None, ""):
            meta[kw] = str(ds.get(kw))
    ids = {"patient_id": ds.get("PatientID"), "study_uid": ds.get("StudyInstanceUID"),
           "accession_number": ds.get("AccessionNumber")}
    return meta, {k: str(v) for k, v in ids.items() if v not in (None, "")}


def _image_job(path: Path, digest: str | None, refused: list[Refused]) -> AuditJob | None:
    """A job for one image file, or None (recorded in ``refused``) for 8-bit images (label maps/masks)."""
    import SimpleITK as sitk

    sid = f"sha256:{digest}"
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        pid = reader.GetPixelID()
        if pid in (sitk.sitkUInt8, sitk.sitkInt8):
            refused.append(Refused(sid, str(path), "8-bit image (a label map or mask?): cannot hold Hounsfield units",
                                   "NotCTError"))
            return None
    except RuntimeError:
        pass  # unreadable header: the task reports it as a broken scan
    from qc.io import _sidecar_metadata

    return AuditJob(source_id=sid, path=str(path), kind="file", header=_sidecar_metadata(path))


def _hash_all(paths: list[Path]) -> dict[Path, str | Exception]:
    from concurrent.futures import ThreadPoolExecutor

    def one(p):
        try:
            return file_sha256(p)
        except OSError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 1)) as ex:
        return dict(zip(paths, ex.map(one, paths)))


def _series_jobs(groups: dict[str, list[Path]], small: dict[str, object],
                 n_localizers: dict[str, int] | None = None) -> tuple[list[AuditJob], list[Refused]]:
    from qc.io import _require_ct, _series_info

    jobs, refused = [], []
    for uid, files in groups.items():
        files = sorted(files)
        n_loc = (n_localizers or {}).get(uid, 0)
        folder = Path(os.path.commonpath([str(f.parent) for f in files]))
        sid = f"dicom:{uid}" if uid != "unknown" else "dicom-nouid:" + hashlib.sha256(
            "\n".join(map(str, files)).encode()).hexdigest()
        info = _series_info(small[uid], len(files))
        try:
            _require_ct(info, folder)
        except QCInputError as exc:
            refused.append(Refused(sid, str(folder), exc.reason, type(exc).__name__))
            continue
        meta, ids = _series_header(files[0])
        notes = [f"{n_loc} localizer/scout image(s) in the series ignored"] if n_loc else []
        jobs.append(AuditJob(source_id=sid, path=str(folder), kind="dicom", series_uid=uid, header=meta, ids=ids,
                             files=[str(f) for f in files], notes=notes))
    return jobs, refused


def discover_folder(folder: Path) -> Discovery:
    """Walk ``folder`` recursively (symlinked folders not followed): image files and DICOM series."""
    out = Discovery()
    from qc.io import is_localizer

    images: list[Path] = []
    groups: dict[str, list[Path]] = {}
    small: dict[str, object] = {}
    scouts: dict[str, list[Path]] = {}      # localizer images, per series
    scout_small: dict[str, object] = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            f = Path(root) / name
            if not f.is_file():
                if f.is_symlink() and not f.exists():  # e.g. a link into an archive that is not mounted
                    out.refused.append(Refused(f"missing:{f}", str(f), "no such file or folder (broken symbolic link)",
                                               "QCInputError", "error"))
                continue
            if _is_image(name):
                images.append(f)
                continue
            if name.lower().endswith(_NOT_DICOM_SUFFIXES) or name.startswith("."):
                out.n_ignored += 1
                continue
            ds = _read_dicom(f, _DISCOVERY_TAGS)
            if ds is None:
                out.n_ignored += 1
                continue
            uid = str(ds.get("SeriesInstanceUID", "unknown"))
            if is_localizer(ds):  # kept apart: a scout may share the UID of the axial series (often its 1st file)
                scouts.setdefault(uid, []).append(f)
                scout_small.setdefault(uid, ds)
                continue
            groups.setdefault(uid, []).append(f)
            small.setdefault(uid, ds)
    n_localizers = {uid: len(fs) for uid, fs in scouts.items() if uid in groups}
    for uid, fs in scouts.items():
        if uid not in groups:  # a series of localizers only: refused as such
            groups[uid], small[uid] = fs, scout_small[uid]
    jobs, refused = _series_jobs(groups, small, n_localizers)
    out.jobs += jobs
    out.refused += refused
    for p, digest in _hash_all(images).items():
        if isinstance(digest, Exception):
            out.refused.append(Refused(f"unreadable:{p}", str(p), f"cannot read: {digest.strerror}", "QCInputError",
                                       "error"))
            continue
        job = _image_job(p, digest, out.refused)
        if job is not None:
            out.jobs.append(job)
    return out


def _norm(col: str) -> str:
    return re.sub(r"[^a-z]", "", col.lower())


def discover_manifest(csv_path: Path) -> Discovery:
    """Inputs from a manifest CSV (``path`` column + optional metadata columns, see the module docstring)."""
    import pandas as pd

    from qc.io import _META_KEYWORDS

    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - pandas raises many types for bad CSV
        raise QCInputError(f"cannot read manifest CSV: {str(exc).splitlines()[0][:160]}", csv_path) from None
    if "path" not in df.columns:
        raise QCInputError(f"manifest has no 'path' column (columns: {', '.join(map(str, df.columns[:10]))})", csv_path)
    out = Discovery()
    roles: dict[str, str] = {}
    for c in df.columns:
        n = _norm(c)
        if c == "path":
            continue
        if n in _ID_COLUMNS:
            roles[c] = "id:" + _ID_COLUMNS[n]
        elif any(w in n for w in _PHI_WORDS) or n in ("name", "patientsname"):
            roles[c] = "drop"
            out.dropped_columns.append(c)
        elif c.lower() in _OVERRIDE_COLUMNS:
            roles[c] = "override"
        elif c in _META_KEYWORDS or c in ("ExposureMAs", "ManufacturerModelName"):
            roles[c] = "header"
        else:
            roles[c] = "extra"
    base = csv_path.parent
    for row in df.to_dict(orient="records"):
        raw = str(row["path"]).strip()
        if not raw:
            continue
        p = Path(raw)
        p = (p if p.is_absolute() else base / p).resolve()
        vals = {c: v for c, v in row.items() if c != "path" and str(v).strip() != ""}
        ids = {roles[c][3:]: v for c, v in vals.items() if roles[c].startswith("id:")}
        overrides = {c.lower(): v for c, v in vals.items() if roles[c] == "override"}
        header = {c: v for c, v in vals.items() if roles[c] == "header"}
        extra = {c: v for c, v in vals.items() if roles[c] == "extra"}
        if not p.exists():
            out.refused.append(Refused(f"missing:{p}", str(p), "no such file or folder", "QCInputError", "error"))
            continue
        sub = discover_folder(p) if p.is_dir() else _discover_file(p)
        for j in sub.jobs:
            j.header = {**header, **j.header}
            j.ids = {**j.ids, **ids}
            j.overrides, j.extra = overrides, extra
        out.jobs += sub.jobs
        out.refused += sub.refused
        out.n_ignored += sub.n_ignored
    return out


def _discover_file(p: Path) -> Discovery:
    out = Discovery()
    if _is_image(p.name):
        digest = _hash_all([p])[p]
        if isinstance(digest, Exception):
            out.refused.append(Refused(f"unreadable:{p}", str(p), f"cannot read: {digest.strerror}", "QCInputError", "error"))
        else:
            job = _image_job(p, digest, out.refused)
            if job is not None:
                out.jobs.append(job)
        return out
    ds = _read_dicom(p, _DISCOVERY_TAGS)
    if ds is None:
        out.refused.append(Refused(f"sha256:{file_sha256(p)}", str(p),
                                   "not a supported image (NIfTI, NRRD, MHA/MHD or DICOM)", "QCInputError", "error"))
        return out
    uid = str(ds.get("SeriesInstanceUID", "unknown"))
    jobs, refused = _series_jobs({uid: [p]}, {uid: ds})
    for j in jobs:  # a single DICOM file (e.g. enhanced multi-frame CT) is assessed as that file
        j.path, j.series_uid = str(p), None
    out.jobs, out.refused = jobs, refused
    return out


def discover(inputs) -> Discovery:
    """All inputs (folders, manifest CSVs, single files); duplicates (same source id) are kept once."""
    total = Discovery()
    for raw in inputs:
        p = Path(raw).resolve()
        if not p.exists():
            raise QCInputError("no such file or folder", raw)
        if p.is_dir():
            d = discover_folder(p)
        elif p.suffix.lower() == ".csv":
            d = discover_manifest(p)
        else:
            d = _discover_file(p)
        root = str(p if p.is_dir() else p.parent)
        for item in (*d.jobs, *d.refused):
            item.root = item.root or root
        total.jobs += d.jobs
        total.refused += d.refused
        total.n_ignored += d.n_ignored
        total.dropped_columns += d.dropped_columns
    seen: set[str] = set()
    jobs = []
    for j in total.jobs:
        if j.source_id not in seen:
            seen.add(j.source_id)
            jobs.append(j)
    refused = []
    for r in total.refused:
        if r.source_id not in seen:
            seen.add(r.source_id)
            refused.append(r)
    total.jobs, total.refused = jobs, refused
    return total


# ----------------------------------------------------------------------------------------------
# the task (runs on a Dask worker)
# ----------------------------------------------------------------------------------------------


#: Test hook only (tests/test_audit.py::test_worker_crash_is_retried_once_then_recorded): when this environment
#: variable is set and non-empty and is a substring of a task's path, the worker process appends the path to the
#: file named by ``CTQC_TEST_CRASH_LOG`` (if set) and exits at once with ``os._exit(1)`` - a worker death, like
#: the OOM killer's, that no ``except`` can catch. Unset in normal use: then it does nothing.
TEST_CRASH_ENV = "CTQC_TEST_CRASH_ON"


def _test_crash_hook(path: str) -> None:
    needle = os.environ.get(TEST_CRASH_ENV)
    if not needle or needle not in path:
        return
    log = os.environ.get("CTQC_TEST_CRASH_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(path + "\n")
    os._exit(1)


#: Worker deaths a scan may cause before it is recorded as an error: 1 = one retry (two attempts in all). In
#: distributed's scheduler a task is failed with KilledWorker when the number of workers that died while running
#: it exceeds ``distributed.scheduler.allowed-failures`` (scheduler.py, ``remove_worker``: suspicious > allowed).
ALLOWED_WORKER_DEATHS = 1


def assess_task(path: str, series_uid: str | None = None, model: str | None = None,
                files: list[str] | None = None) -> dict:
    """Assess one scan on a worker. ``files``: a DICOM series' files as found at discovery (only their headers
    are read, not the whole folder's). Returns plain dicts only:
    ``{"ok": True, "result": Assessment.to_json_dict(), "seconds": s}`` or
    ``{"ok": False, "reason": one line, "error_type": exception class, "file": the file inside ``path`` the
    error names (or None), "seconds": s}``."""
    t0 = time.perf_counter()
    _test_crash_hook(path)
    try:
        from qc.pipeline import assess

        if files:
            from qc.io import load_dicom_files

            scan = load_dicom_files(files, source=path)
            t_load = time.perf_counter() - t0
            res = assess(scan, model=model)
            res.timings_s["load"] = round(t_load, 3)
            res.timings_s["total"] = round(time.perf_counter() - t0, 3)
        else:
            res = assess(path, series_uid=series_uid, model=model)
        return {"ok": True, "result": json.loads(json.dumps(res.to_json_dict(), default=str)),
                "seconds": time.perf_counter() - t0}
    except QCInputError as exc:
        inner = None
        if exc.path and os.path.abspath(exc.path) != os.path.abspath(path):
            rel = os.path.relpath(exc.path, path)
            inner = rel if not rel.startswith("..") else None
        return {"ok": False, "reason": exc.reason, "error_type": type(exc).__name__, "file": inner,
                "seconds": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001 - any failure of one scan must not stop the batch
        import traceback

        tb = traceback.extract_tb(exc.__traceback__)
        where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
        msg = " ".join(str(exc).split())[:300] or "no message"
        return {"ok": False, "reason": f"internal error: {msg}{where}", "error_type": type(exc).__name__,
                "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------
# results -> store rows (client)
# ----------------------------------------------------------------------------------------------


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f and abs(f) != float("inf") else None


def _text(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        v = "/".join(str(x) for x in v)
    s = " ".join(str(v).split())
    return s or None


def parse_date(v) -> date | None:
    """DICOM DA (YYYYMMDD) or ISO (YYYY-MM-DD...) -> date; None when empty or unparsable."""
    if v is None:
        return None
    if isinstance(v, datetime):
        return v.date()
    if isinstance(v, date):
        return v
    s = str(v).strip()
    for fmt, n in (("%Y%m%d", 8), ("%Y-%m-%d", 10)):
        try:
            return datetime.strptime(s[:n], fmt).date()
        except ValueError:
            continue
    return None


def build_record(job: AuditJob, result: dict, mv: str, id_salt: str = DEFAULT_ID_SALT,
                 keep_phi: bool = False, policy: PathPolicy | None = None) -> ScanRecord:
    """Store rows for one assessment (``result`` = ``Assessment.to_json_dict()``); see :mod:`qc.store` for columns.
    ``policy`` (default: absolute paths) decides how the input's location is stored."""
    policy = policy or PathPolicy("absolute", id_salt)
    sid, shown = policy.source_id(job.source_id), policy.path(job.path, job.root)
    result = {**result, "source": shown}
    meta = {**job.header, **{k: v for k, v in (result.get("scan") or {}).items() if v not in (None, "")}}
    protocol = next((_text(meta[k]) for k in ("ProtocolName", "SeriesDescription", "StudyDescription")
                     if _text(meta.get(k))), None)
    scanner = _text(" ".join(str(meta[k]) for k in ("Manufacturer", "ManufacturerModelName") if _text(meta.get(k))))
    warnings = [policy.scrub(str(w), job.path, shown) for w in [*(result.get("warnings") or []), *job.notes]]
    result["warnings"] = warnings
    row = {
        "key": f"{sid}@{mv}", "source_id": sid, "model_version": mv, "path": shown,
        "series_uid": policy.series_uid(job.series_uid) if job.kind == "dicom" else None, "region": result.get("region"),
        "protocol": protocol, "scanner": scanner, "kernel": _text(meta.get("ConvolutionKernel")),
        "kvp": _num(meta.get("KVP")), "mas": _num(meta.get("ExposureMAs")), "ctdivol": _num(meta.get("CTDIvol")),
        "study_date": parse_date(meta.get("StudyDate")),
        "patient_id_hash": hash_id(job.ids.get("patient_id"), id_salt),
        "study_id_hash": hash_id(job.ids.get("study_uid"), id_salt),
        "overall": _num(result.get("overall")), "n_warnings": len(warnings), "warnings": warnings,
        "extra": job.extra or None, "result_json": result, "assessed_at": utc_now(),
    }
    for k, v in job.overrides.items():
        row[k] = _num(v) if k in ("kvp", "mas", "ctdivol") else parse_date(v) if k == "study_date" else _text(v)
    if keep_phi:
        for k in ("patient_id", "study_uid", "accession_number"):
            row[k] = job.ids.get(k)
    iqms = [{"iqm": n, "value": _num(d.get("value")), "unit": d.get("unit"), "direction": d.get("direction"),
             "status": d.get("status")} for n, d in (result.get("iqms") or {}).items()]
    scores = [{"category": n, "score": _num(c.get("score"))} for n, c in (result.get("categories") or {}).items()]
    return ScanRecord(scan=row, iqms=iqms, scores=scores)


# ----------------------------------------------------------------------------------------------
# orchestration (client)
# ----------------------------------------------------------------------------------------------


@dataclass
class AuditSummary:
    store: str
    model_version: str
    n_found: int = 0             # scans discovered (assessable inputs)
    n_already: int = 0           # of those, already in the store
    n_ok: int = 0                # assessed and stored in this run
    n_failed: int = 0            # failed in this run (stored in errors)
    n_skipped: int = 0           # refused at discovery in this run (errors, kind 'skipped'/'error')
    n_ignored_files: int = 0     # files that are neither images nor DICOM
    workers: int = 0
    seconds: float = 0.0         # wall time of the whole run
    discover_seconds: float = 0.0
    cluster_seconds: float = 0.0   # starting the LocalCluster / connecting to the scheduler
    interrupted: bool = False
    dropped_columns: list[str] = field(default_factory=list)

    def line(self) -> str:
        rate = f", {3600 * (self.n_ok + self.n_failed) / self.seconds:.0f} scans/h" if self.seconds > 0 and (
            self.n_ok + self.n_failed) else ""
        return (f"{self.n_found} scan(s) found, {self.n_already} already stored; assessed {self.n_ok} ok, "
                f"{self.n_failed} failed, {self.n_skipped} skipped/refused input(s) in {self.seconds:.1f} s"
                f"{rate} on {self.workers} worker(s); store: {self.store}")


class _Reporter:
    """Progress on stderr: a rich bar with ETA on a terminal, else one line per finished scan."""

    def __init__(self, total: int, enabled: bool):
        from rich.console import Console

        self.total, self.done, self.failed, self.t0 = total, 0, 0, time.perf_counter()
        self.enabled = enabled
        self.console = Console(stderr=True, highlight=False)
        self.bar = None
        if enabled and self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("audit"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
                                TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
            self.task = self.bar.add_task("audit", total=total, failed=0)
            self.bar.start()

    def advance(self, ok: bool, label: str, detail: str) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1, failed=self.failed)
            if not ok:
                self.bar.console.print(f"[yellow]failed:[/] {label}: {detail}")
        elif self.enabled:
            el = time.perf_counter() - self.t0
            eta = el / self.done * (self.total - self.done)
            sys.stderr.write(f"[{self.done}/{self.total}] {'ok    ' if ok else 'FAILED'} {label}  {detail}  "
                             f"eta {int(eta) // 60}:{int(eta) % 60:02d}\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _label(job: AuditJob, policy: PathPolicy) -> str:
    """How a scan is named in progress lines: its stored path (+ the end of its series UID unless hashed)."""
    shown = policy.path(job.path, job.root)
    if job.kind == "file" or policy.mode == "hashed":
        return shown
    return f"{shown} [{(job.series_uid or '')[-12:]}]"


def _open_client(workers: int, scheduler: str | None, stack):
    import logging

    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            return stack.enter_context(Client(scheduler, timeout="20s"))
        except (OSError, TimeoutError) as exc:
            raise QCInputError(f"cannot connect to the Dask scheduler: {str(exc).splitlines()[0][:160]}",
                               scheduler) from None
    import dask

    # Read by the scheduler when it is created (here, in this process). allowed-failures: a scan that kills its
    # worker is retried once, then fails with KilledWorker (default 3 retries: 4 crashes, each costing a worker
    # restart and possibly minutes of work). worker-saturation 1.0: a single-threaded worker is sent only the
    # task it runs (the default 1.1 queues a second one on it), so that a worker's death counts against, and
    # re-runs, only the scan that was running there, never an innocent scan queued behind it.
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_WORKER_DEATHS,
                          "distributed.scheduler.worker-saturation": 1.0}):
        cluster = stack.enter_context(LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.ERROR,
            # one core per worker: keep ITK/BLAS from oversubscribing the cores
            env={"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1", "OMP_NUM_THREADS": "1"}))
    return stack.enter_context(Client(cluster))


def run_audit(inputs, store, *, workers: int | None = None, scheduler: str | None = None, model=None,
              id_salt: str = DEFAULT_ID_SALT, keep_phi: bool = False, retry_errors: bool = False,
              progress: bool = True, paths: str = "absolute") -> AuditSummary:
    """Audit every CT under ``inputs`` (folders, manifest CSVs, files) into the DuckDB ``store``.

    workers: LocalCluster worker processes (default: CPU cores; at most one per pending scan).
    scheduler: address of an existing Dask scheduler (then ``workers`` is ignored). model: fitted model
    JSON (default: the rubric). retry_errors: forget earlier failures (kind 'error') and try them again.
    paths: 'absolute', 'relative' or 'hashed' (see :class:`PathPolicy`).
    Raises :class:`QCInputError` for unusable arguments (missing input, unreadable manifest, store in use,
    a store written with another ``paths`` mode).
    """
    from contextlib import ExitStack

    t0 = time.perf_counter()
    mv = model_version(model)
    model_arg = str(Path(model).resolve()) if model is not None else None
    if not inputs:
        raise QCInputError("no input given (folders, files or a manifest CSV)")
    if not id_salt:
        raise QCInputError("--id-salt must not be empty")
    policy = PathPolicy(paths, id_salt)
    summary = AuditSummary(store=str(store), model_version=mv)
    with Store(store) as st:
        st.require_meta("path_mode", policy.mode, "--paths")
        if retry_errors:
            st.delete_errors("error")
        disc = discover(inputs)
        summary.discover_seconds = time.perf_counter() - t0
        summary.n_ignored_files, summary.dropped_columns = disc.n_ignored, disc.dropped_columns
        done = st.done_keys()
        for r in disc.refused:
            sid = policy.source_id(r.source_id)
            if f"{sid}@{mv}" not in done:
                summary.n_skipped += int(st.add_error(f"{sid}@{mv}", sid, mv, policy.path(r.path, r.root), r.reason,
                                                      r.error_type, r.kind))
        summary.n_found = len(disc.jobs)
        todo = [j for j in disc.jobs if f"{policy.source_id(j.source_id)}@{mv}" not in done]
        summary.n_already = summary.n_found - len(todo)
        if not todo:
            summary.seconds = time.perf_counter() - t0
            return summary
        n_workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        from dask.distributed import as_completed
        from distributed.scheduler import KilledWorker

        reporter = _Reporter(len(todo), progress)
        try:
            with ExitStack() as stack:
                t1 = time.perf_counter()
                client = _open_client(n_workers, scheduler, stack)
                summary.cluster_seconds = time.perf_counter() - t1
                summary.workers = len(client.scheduler_info().get("workers", {})) if scheduler else n_workers
                futures = {client.submit(assess_task, j.path, j.series_uid, model_arg, j.files or None, pure=False): j
                           for j in todo}
                for fut in as_completed(list(futures)):
                    job = futures.pop(fut)
                    sid, shown = policy.source_id(job.source_id), policy.path(job.path, job.root)
                    key = f"{sid}@{mv}"
                    try:
                        out = fut.result()
                    except KilledWorker as exc:  # every attempt's worker process died while running this scan
                        n = exc.allowed_failures + 1
                        out = {"ok": False, "error_type": "KilledWorker",
                               "reason": f"the worker assessing this scan died {'twice' if n == 2 else f'{n} times'}"
                                         " (killed or crashed: out of memory?)"}
                    except Exception as exc:  # noqa: BLE001 - any other task failure
                        out = {"ok": False, "reason": " ".join(str(exc).split())[:300] or "task failed",
                               "error_type": type(exc).__name__}
                    fut.release()
                    if out["ok"]:
                        rec = build_record(job, out["result"], mv, id_salt, keep_phi, policy)
                        st.add_scan(rec)
                        summary.n_ok += 1
                        ov = rec.scan["overall"]
                        reporter.advance(True, _label(job, policy), f"{rec.scan['region']} overall "
                                         + ("n/a" if ov is None else f"{ov:.2f}"))
                    else:
                        reason = policy.scrub(out["reason"], job.path, shown) + policy.file_in_series(out.get("file"))
                        st.add_error(key, sid, mv, shown, reason, out["error_type"], "error")
                        summary.n_failed += 1
                        reporter.advance(False, _label(job, policy), f"{out['error_type']}: {reason}")
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            reporter.close()
    summary.seconds = time.perf_counter() - t0
    return summary

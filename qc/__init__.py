"""CT quality-control engine.

Data flows one way: ``qc.io`` (load) -> ``detectors`` (masks, region) -> ``metrics`` (IQMs)
-> ``regression`` (scores) -> ``qc.report`` / ``qc.audit`` (outputs).

Python API::

    import qc
    result = qc.assess("scan.nii.gz", region="auto")
    print(result.overall)
"""

__version__ = "0.1.0"

__all__ = ["__version__", "assess", "load_scan"]


def __getattr__(name):  # lazy: keep `import qc` (and `qc --help`) cheap
    if name == "assess":
        from qc.pipeline import assess

        return assess
    if name == "load_scan":
        from qc.io import load_scan

        return load_scan
    raise AttributeError(name)

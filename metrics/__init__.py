"""Image-quality metrics (IQMs): pure functions, arrays + masks + spacing in, numbers out.

See :mod:`metrics.registry` for the registry and the inputs a metric may ask for."""

from metrics.registry import REGISTRY, IQMSpec, get_registry, register_iqm

__all__ = ["REGISTRY", "IQMSpec", "get_registry", "register_iqm"]

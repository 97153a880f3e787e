"""Linear score models: IQMs -> category scores -> overall score, with exact per-term contributions."""

from regression.model import HierarchyModel, item_score

__all__ = ["HierarchyModel", "item_score"]

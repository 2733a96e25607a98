"""Placement searches (DAS gates, KAB-APP bandit) and the Placement they produce. No backbone imports."""

from vlpeft.search.das import DASSearch, SearchState
from vlpeft.search.kab import KABSearch, format_progress
from vlpeft.search.placement import Placement, PlacementError, validate_insert_layer, validate_skip
from vlpeft.search.plot import save_history_plot

__all__ = [
    "DASSearch",
    "KABSearch",
    "Placement",
    "PlacementError",
    "SearchState",
    "format_progress",
    "save_history_plot",
    "validate_insert_layer",
    "validate_skip",
]

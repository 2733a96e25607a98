"""Placement searches (DAS gates, KAB-APP bandit) and the Placement they produce. No backbone imports."""

from vlpeft.search._base import SEARCHES, SearchState, SearchStrategy, build_search
from vlpeft.search.das import DASSearch
from vlpeft.search.kab import KABSearch, format_progress
from vlpeft.search.placement import Placement, PlacementError, validate_insert_layer, validate_skip
from vlpeft.search.plot import save_history_plot

__all__ = [
    "DASSearch",
    "SEARCHES",
    "SearchStrategy",
    "build_search",
    "KABSearch",
    "Placement",
    "PlacementError",
    "SearchState",
    "format_progress",
    "save_history_plot",
    "validate_insert_layer",
    "validate_skip",
]

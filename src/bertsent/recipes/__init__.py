"""Recipes that chain stages: the trade-off table (``compare``), the compression recipe (``compress``)
and the full-scale results page (``reproduce``)."""

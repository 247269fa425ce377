"""Monitoring: segment health over time, drift, freshness, data quality,
overlap, campaign results and lift.

Pure functions of the database, shared by the notebooks, the CLI and the
monitor flow; each module is named for what it holds.
"""

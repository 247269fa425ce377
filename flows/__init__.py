"""Prefect flows: thin orchestration over core functions (see flows/ingest.py)."""

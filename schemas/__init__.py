"""Pydantic models for every Temporal boundary and REST body, and the SQLModel tables."""

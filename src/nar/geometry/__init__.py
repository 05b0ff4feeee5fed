"""Token-grid geometry: the single source of frontiers, masks and decoding schedules."""

from nar.geometry.grid import DecodeStep, GridGeometry, Schedule

__all__ = ["DecodeStep", "GridGeometry", "Schedule"]

"""Token-grid geometry: the single source of frontiers, masks and decoding schedules."""

from nar.geometry.grid import DecodeLayout, DecodeStep, GridGeometry, Schedule, StepLayout

__all__ = ["DecodeLayout", "DecodeStep", "GridGeometry", "Schedule", "StepLayout"]

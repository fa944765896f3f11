"""Preprocessing: checks and preparations before a fit."""

from ._check_design import check_design

__all__ = ["check_design"]

"""Warnings attributed to the user's line, however deep inside scvarpart they arise."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from types import FrameType

__all__ = ["warn"]

_PACKAGE_DIR = str(Path(__file__).parent)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Issue ``message`` with the stack level of the first caller outside scvarpart."""
    frame: FrameType | None = sys._getframe(1)  # the caller of warn(), stack level 2
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)

"""Names given as one name, several names or none, turned into a list.

Component, column and gene names reach the package as a string (``batch="day"``),
a list or tuple, an array (a list stored in ``uns`` and read back from a file), a
comma-separated text (the command line and analysis plans), or ``None``. Every
caller turns them into a list here, so that they are accepted and refused alike.
No import beyond the standard library: the command line uses it and starts at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["as_names"]


def as_names(
    value: str | Iterable[str] | None, what: str, *, split: bool = False
) -> list[str] | None:
    """The names in ``value`` as a list (``None`` stays ``None``).

    Parameters
    ----------
    value
        A name, an iterable of names (list, tuple, array, index) or ``None``.
    what
        What the names are, for the error message (e.g. ``"batch"``).
    split
        A string holds comma-separated names (``"day, operator"``), as the command
        line and analysis plans write lists; blanks around names are removed.

    Returns
    -------
    list of str or None
        The names, in order.

    Raises
    ------
    TypeError
        When ``value`` is neither a name nor an iterable of names.

    Examples
    --------
    >>> as_names("day", "batch")
    ['day']
    >>> as_names("day, operator", "batch", split=True)
    ['day', 'operator']
    """
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()] if split else [value]
    if getattr(value, "ndim", None) == 0:  # one name stored as a 0-d array
        value = [value.item()]  # type: ignore[attr-defined]
    try:
        # a mapping iterates over its keys: refused rather than read as names
        names = None if isinstance(value, Mapping) else list(value)
    except TypeError:  # not iterable: a number, say
        names = None
    if names is None or not all(isinstance(v, str) for v in names):
        raise TypeError(f"{what} must be a name or a list of names, got {value!r}.")
    return [str(v) for v in names]

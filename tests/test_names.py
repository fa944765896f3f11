"""Names given as one name, several or none: one rule for the API, files and the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scvarpart._names import as_names


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("day", ["day"]),
        (["day", "operator"], ["day", "operator"]),
        (("day",), ["day"]),
        (np.array(["day", "operator"]), ["day", "operator"]),  # a list read back from h5ad
        (np.array("day"), ["day"]),  # one name read back as a 0-d array
        (pd.Index(["day"]), ["day"]),
        ([], []),
    ],
)
def test_accepted_forms(value, expected):
    assert as_names(value, "batch") == expected


def test_comma_separated_text_only_when_asked():
    assert as_names(" day, operator ,", "batch", split=True) == ["day", "operator"]
    assert as_names("day, operator", "batch") == ["day, operator"]


@pytest.mark.parametrize("value", [3, ["day", 1], {"day": 1}, 2.5])
def test_other_values_are_refused_naming_what(value):
    with pytest.raises(TypeError, match="batch must be a name or a list of names"):
        as_names(value, "batch")

"""A pre-registered analysis plan: the model and filters, fixed in a TOML or YAML file.

Example (``plan.toml``)::

    formula = "~ log_umi + (1|patient) + (1|chemistry) + (1|day) + (1|operator)"
    method = "ML"
    batch = ["chemistry", "day", "operator"]
    signal = ["patient"]
    weights = "w"             # obs column of observation weights (optional)
    family = "nb"             # count model of layer's raw counts: "nb" or "poisson" (optional)
    offset = "log_sf"         # with a count family: obs column of log size factors (optional)
    approximation = "lognormal"  # with a count family: or "trigamma" (optional)
    store_blups = true        # also store every random term's BLUPs (optional)
    test = "lrt"              # likelihood-ratio test of each random term (optional)
    n_boot = 200              # parametric bootstrap replicates per gene (optional)
    seed = 1                  # the bootstrap's seed (optional, default 0)
    ci = 0.95                 # level of the intervals (optional, default 0.95; "none": none)

    [filters]
    min_cells = 10            # genes non-zero in fewer cells are not fitted
    cells = { qc = ["pass"] } # model only these cells

    [covariance]              # known covariances between levels (optional)
    patient = "kinship.csv"   # relative to the plan's folder

    [checks]                  # model checks declared in advance (optional)
    diagnose = true           # svp.tl.diagnose after the fit: BLUPs, residuals, influence
    leave_out = ["day"]       # factors left out level by level (default: the batch terms)
    residuals = true          # the residual checks (default true)
    fdr = 0.05                # q-value below which a test counts (with test = "lrt")
    max_std_blup = 3.5        # flag genes with a standardised BLUP beyond this
    max_var_ratio = 4.0       # ... whose residual variance differs this much across levels
    max_change = 0.1          # ... whose batch fraction moves this much without one level

``scvarpart fit`` runs the declared checks and records them with the results;
``scvarpart report`` lists each one, whether it ran and what it found, so a
pre-registered plan can be shown to have been followed. The same keys in YAML work too.
Unknown keys are an error: a plan says exactly what will be done. ``seed`` is used only
with bootstrap replicates (``n_boot`` > 0, from the plan or ``scvarpart fit --n-boot``);
``ci`` is the level of every interval (standard errors and delta-method intervals per
gene, and the bootstrap's), ``"none"`` for none. The SHA-256 of the file is recorded
with the results (and a fingerprint of each covariance file, by ``scvarpart fit``).

A covariance file is a ``.csv`` (comma-separated) or ``.tsv``/``.txt``
(tab-separated) file, optionally gzipped: a square matrix with a header row of
level names and the level names as first column (see
:func:`scvarpart._io.read_covariance_file`). Its path, if relative, is taken from
the folder of the plan file as given (a symbolic link to a plan is not followed:
a plan staged into a task folder beside its covariance files finds them there).
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ._bootstrap_options import BOOTSTRAP_DEFAULTS, BOOTSTRAP_KEYS, bootstrap_problem
from ._names import as_names

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["AnalysisPlan", "PlanError", "read_plan"]


class PlanError(ValueError):
    """An analysis plan that cannot be read or is not valid."""


_TOP = {
    "formula",
    "method",
    "batch",
    "signal",
    "layer",
    "use_raw",
    "key_added",
    "weights",
    "family",
    "offset",
    "approximation",
    "store_blups",
    "test",
    "n_boot",
    "seed",
    "ci",
    "filters",
    "covariance",
    "checks",
}
_FILTERS = {"min_cells", "cells"}
#: The plan's [checks]: key -> (kind, default). Thresholds flag genes in the report.
CHECKS: dict[str, tuple[str, object]] = {
    "diagnose": ("bool", False),
    "leave_out": ("names", None),
    "residuals": ("bool", True),
    "fdr": ("level", 0.05),
    "max_std_blup": ("positive", 3.5),
    "max_var_ratio": ("positive", 4.0),
    "max_change": ("positive", 0.1),
}
_TESTS = ("lrt",)


@dataclass(frozen=True)
class AnalysisPlan:
    """The parameters a plan fixes (see the module's documentation)."""

    formula: str
    method: str = "ML"
    batch: list[str] | None = None
    signal: list[str] | None = None
    layer: str | None = None
    use_raw: bool = False
    key_added: str = "varpart"
    min_cells: int = 0
    cells: dict[str, list] | None = None
    weights: str | None = None
    #: ``"gaussian"`` (the default) or a count family, with its offset column and
    #: distribution-specific variance (:func:`scvarpart.tl.variance_partition`).
    family: str = "gaussian"
    offset: str | None = None
    approximation: str = "lognormal"
    #: Random term -> its covariance file (resolved against the plan's folder).
    covariance: dict[str, str] | None = None
    #: ``None``: the plan does not say (no BLUPs; ``scvarpart fit --store-blups`` may
    #: add them), unlike an explicit ``false``.
    store_blups: bool | None = None
    #: ``"lrt"``: the likelihood-ratio test of each random term's variance = 0;
    #: ``None``: the plan does not say (no tests; ``scvarpart fit --test lrt`` may add
    #: them).
    test: str | None = None
    #: Parametric bootstrap replicates per gene; ``None``: the plan does not say (no
    #: bootstrap; ``scvarpart fit --n-boot N`` may add one), unlike an explicit ``0``.
    n_boot: int | None = None
    #: The bootstrap's seed and the level of the intervals (``"none"``: no intervals);
    #: ``None``: the plan does not say (0 and 0.95; ``--seed`` and ``--ci`` may set them).
    seed: int | None = None
    ci: float | str | None = None
    #: The declared checks (:data:`CHECKS`, defaults filled in); ``None``: none declared.
    checks: dict | None = None
    path: str = ""
    sha256: str = field(default="", compare=False)

    def read_covariance(self) -> dict[str, pd.DataFrame] | None:
        """The plan's covariance matrices, read from their files.

        Raises
        ------
        PlanError
            Naming the plan, the term and the file, for a file that cannot be read or
            is not a square matrix of numbers with the same levels as header and first
            column.
        """
        if not self.covariance:
            return None
        from ._io import InputError, read_covariance_file

        out = {}
        for term, file in self.covariance.items():
            try:
                out[term] = read_covariance_file(file)
            except InputError as err:
                raise PlanError(f"The plan {self.path}, [covariance] {term}: {err}") from None
        return out

    def as_kwargs(self, *, read_covariance: bool = True) -> dict:
        """Keyword arguments of :func:`scvarpart.tl.variance_partition`.

        With ``read_covariance=False``, ``covariance`` is left out (for a caller that
        reads the files itself, from :attr:`covariance`). ``test`` is there only when
        the plan asks for a test, ``n_boot`` and ``seed`` only when it asks for bootstrap
        replicates (as in the parameters the fit records); ``ci`` always (``None``: no
        intervals).
        """
        covariance = {"covariance": self.read_covariance()} if read_covariance else {}
        return {
            "formula": self.formula,
            "method": self.method,
            "batch": self.batch,
            "signal": self.signal,
            "layer": self.layer,
            "use_raw": self.use_raw,
            "key_added": self.key_added,
            "min_cells": self.min_cells,
            "cells": self.cells,
            "weights": self.weights,
            **self.count_model(),
            **covariance,
            "store_blups": bool(self.store_blups),
            **({"test": self.test} if self.test else {}),
            **self.bootstrap(),
            "ci": self.level(),
        }

    def count_model(self) -> dict:
        """``family``, ``offset`` and ``approximation`` for a count model; empty otherwise."""
        if self.family == "gaussian":
            return {}
        return {"family": self.family, "offset": self.offset, "approximation": self.approximation}

    def level(self) -> float | None:
        """The intervals' level: the plan's, 0.95 if it does not say, ``None`` for none."""
        if self.ci == "none":
            return None
        return BOOTSTRAP_DEFAULTS["ci"] if self.ci is None else float(self.ci)

    def bootstrap(self) -> dict:
        """The bootstrap's parameters if the plan asks for replicates; empty otherwise.

        ``n_boot`` and ``seed``, the default seed filled in; without replicates, ``seed``
        is unused. The level is :meth:`level`'s.
        """
        if not self.n_boot:
            return {}
        return {
            "n_boot": self.n_boot,
            "seed": BOOTSTRAP_DEFAULTS["seed"] if self.seed is None else self.seed,
        }


def _checks(table, path) -> dict | None:
    """The plan's [checks], validated, with every default filled in (``None``: none)."""
    if table is None:
        return None
    if not isinstance(table, dict) or set(table) - set(CHECKS):
        raise PlanError(f"The plan's [checks] may hold {sorted(CHECKS)}; got {table!r} in {path}.")
    out = {}
    for key, (kind, default) in CHECKS.items():
        value = table.get(key, default)
        ok = {
            "bool": isinstance(value, bool),
            "names": value is None or isinstance(value, str | list),
            "level": isinstance(value, int | float)
            and not isinstance(value, bool)
            and 0 < value < 1,
            "positive": isinstance(value, int | float)
            and not isinstance(value, bool)
            and value > 0,
        }[kind]
        if not ok:
            what = {
                "bool": "true or false",
                "names": "a factor's name or a list of them",
                "level": "a number between 0 and 1",
                "positive": "a positive number",
            }[kind]
            raise PlanError(f"checks.{key} must be {what}; got {value!r} in {path}.")
        out[key] = [value] if kind == "names" and isinstance(value, str) else value
    return out


def _level(value) -> float | str | None:
    """A plan's ``ci``: a level, ``"none"`` (no intervals) or ``None`` (not said)."""
    return value if value is None or value == "none" else float(value)


def _names(value, key: str) -> list[str] | None:
    """The names of plan key ``key``: a comma-separated text or a list of names."""
    if not (value is None or isinstance(value, str | list)):  # not a table or a number
        raise PlanError(f"Plan key {key!r} must be a name or a list of names, got {value!r}.")
    try:
        return as_names(value, f"Plan key {key!r}", split=True)
    except TypeError as err:
        raise PlanError(str(err)) from None


def _covariance_files(value, plan: Path) -> dict[str, str] | None:
    """The plan's ``[covariance]`` table: term -> file, relative to the plan's folder.

    Only that the files exist is checked here; they are read before any data are.
    """
    if value is None:
        return None
    example = 'e.g. [covariance] with donor = "kinship.csv"'
    if not isinstance(value, dict) or not value:
        raise PlanError(
            f"The plan's covariance must be a table of random terms and covariance files "
            f"({example}), got {value!r} in {plan}."
        )
    out = {}
    for term, file in value.items():
        if not isinstance(file, str) or not file:
            raise PlanError(
                f"The plan's [covariance] {term} must be the path of a covariance file "
                f"({example}), got {file!r} in {plan}."
            )
        # the folder of the plan as given, not of its target if it is a symbolic link
        resolved = plan.parent / Path(file).expanduser()
        if not resolved.is_file():
            raise PlanError(
                f"The plan {plan}, [covariance] {term}: the covariance file {resolved} "
                f"{'is a folder' if resolved.is_dir() else 'does not exist'} (relative paths "
                "are taken from the plan's folder)."
            )
        out[str(term)] = str(resolved)
    return out


# a sequence of checks of the plan's fields, each raising its own message naming the
# field and the fix: one function reads as the list of what a plan may hold
def _count_model(data: dict, path) -> tuple[str, str | None, str]:
    """The plan's ``family``, ``offset`` and ``approximation``, checked."""
    family = data.get("family", "gaussian")
    if family not in ("gaussian", "poisson", "nb"):
        raise PlanError(
            f"Plan family must be 'gaussian', 'poisson' or 'nb', got {family!r} in {path}."
        )
    offset = data.get("offset")
    if offset is not None and not (isinstance(offset, str) and offset):
        raise PlanError(f"Plan offset must name an obs column of log size factors, got {offset!r}.")
    approximation = data.get("approximation", "lognormal")
    if approximation not in ("lognormal", "trigamma"):
        raise PlanError(
            f"Plan approximation must be 'lognormal' or 'trigamma', got {approximation!r}."
        )
    if family == "gaussian" and ("offset" in data or "approximation" in data):
        raise PlanError(
            f"The plan {path} sets offset or approximation, which are for count models: "
            "set family = 'nb' or 'poisson' too, or remove them."
        )
    return family, offset, approximation


def read_plan(path: str | os.PathLike) -> AnalysisPlan:  # noqa: C901
    """Read and validate a plan (``.toml``, ``.yaml`` or ``.yml``)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PlanError(f"Cannot read the plan {path}: {err.strerror}.") from err
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(raw.decode())
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(raw.decode())
        else:
            raise PlanError(f"The plan {path} must be a .toml, .yaml or .yml file.")
    except (tomllib.TOMLDecodeError, ValueError) as err:
        if isinstance(err, PlanError):
            raise
        raise PlanError(f"The plan {path} does not parse: {err}") from err
    except Exception as err:  # yaml.YAMLError without importing yaml eagerly
        raise PlanError(f"The plan {path} does not parse: {err}") from err
    if not isinstance(data, dict):
        raise PlanError(f"The plan {path} must be a table of keys (formula, method, ...).")
    unknown = set(data) - _TOP
    if unknown:
        raise PlanError(
            f"Unknown keys {sorted(unknown)} in the plan {path}; allowed: {sorted(_TOP)}."
        )
    if "formula" not in data or not isinstance(data["formula"], str):
        raise PlanError(f"The plan {path} must give the formula as a string.")
    filters = data.get("filters") or {}
    if not isinstance(filters, dict) or set(filters) - _FILTERS:
        raise PlanError(
            f"The plan's [filters] may hold {sorted(_FILTERS)}; got {filters!r} in {path}."
        )
    cells = filters.get("cells")
    if cells is not None and not (
        isinstance(cells, dict) and all(isinstance(k, str) for k in cells)
    ):
        raise PlanError(f"filters.cells must map obs columns to allowed values, got {cells!r}.")
    min_cells = filters.get("min_cells", 0)
    if not isinstance(min_cells, int) or isinstance(min_cells, bool) or min_cells < 0:
        raise PlanError(f"filters.min_cells must be a non-negative integer, got {min_cells!r}.")
    method = str(data.get("method", "ML")).upper()
    if method not in ("ML", "REML"):
        raise PlanError(f"Plan method must be 'ML' or 'REML', got {data['method']!r}.")
    layer = data.get("layer")
    if layer is not None and not isinstance(layer, str):
        raise PlanError(f"Plan layer must be a string, got {layer!r}.")
    weights = data.get("weights")
    if weights is not None and not (isinstance(weights, str) and weights):
        raise PlanError(
            f"Plan weights must be the name of an obs column of observation weights, got "
            f"{weights!r}."
        )
    family, offset, approximation = _count_model(data, path)
    store_blups = data.get("store_blups")
    if store_blups is not None and not isinstance(store_blups, bool):
        raise PlanError(f"Plan store_blups must be true or false, got {store_blups!r}.")
    test = data.get("test")
    if test is not None and test not in _TESTS:
        raise PlanError(
            f"Plan test must be one of {list(_TESTS)} (the likelihood-ratio test of each "
            f"random term's variance = 0), or left out for none; got {test!r} in {path}."
        )
    for key in BOOTSTRAP_KEYS:
        unset = data.get(key) is None or (key == "ci" and data[key] == "none")
        problem = None if unset else bootstrap_problem(key, data[key])
        if problem:
            raise PlanError(f"Plan {key} {problem}; got {data[key]!r} in {path}.")
    covariance = _covariance_files(data.get("covariance"), path)
    checks = _checks(data.get("checks"), path)
    return AnalysisPlan(
        formula=data["formula"],
        method=method,
        batch=_names(data.get("batch"), "batch"),
        signal=_names(data.get("signal"), "signal"),
        layer=layer,
        use_raw=bool(data.get("use_raw", False)),
        key_added=str(data.get("key_added", "varpart")),
        min_cells=min_cells,
        cells={k: v if isinstance(v, list) else [v] for k, v in cells.items()} if cells else None,
        weights=weights,
        family=family,
        offset=offset,
        approximation=approximation,
        covariance=covariance,
        store_blups=store_blups,
        test=test,
        n_boot=data.get("n_boot"),
        seed=data.get("seed"),
        ci=_level(data.get("ci")),
        checks=checks,
        path=str(path),
        sha256=hashlib.sha256(raw).hexdigest(),
    )

"""Parse model formulas written in lme4 syntax.

The parser is a small recursive-descent parser over a fixed grammar, so a
formula string taken from a pipeline parameter is never evaluated as Python.

Supported::

    ~ a + b            continuous or categorical fixed effects
    ~ a:b, a*b, a/b    interactions, crossing (a + b + a:b), nesting (a + a:b)
    ~ (a + b):c        distribution of ':' and '*' over parenthesised sums
    ~ a*b - a:b        removal of terms
    ~ 0 + a, ~ a - 1   no intercept (rejected later for variance partition)
    ~ (1|g)            random intercept per level of g
    ~ (1|a:b)          random intercept per observed combination of a and b
    ~ (1|a/b)          nested: (1|a) + (1|a:b)
    ~ (x|g), (1 + x|g) correlated random intercept and slope of the covariate x per
                       level of g (several covariates: (1 + x + z|g))
    ~ (0 + x|g)        random slope without intercept
    ~ (x||g)           uncorrelated: (1|g) + (0 + x|g), one term per coefficient,
                       as lme4 expands it

A slope's covariates are obs columns (numeric); nothing is evaluated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Formula", "FormulaError", "RandomTerm", "parse_formula"]


class FormulaError(ValueError):
    """A model formula that cannot be parsed or is not supported."""


@dataclass(frozen=True)
class RandomTerm:
    """A random term ``(1 + x + ...|g1:g2:...)``: coefficients that vary by group.

    Attributes
    ----------
    factors
        The obs columns whose combinations define the groups.
    covariates
        The covariates whose slopes vary by group (none for a random intercept).
    intercept
        Whether the term has a random intercept (``(0 + x|g)`` has not).
    """

    factors: tuple[str, ...]
    covariates: tuple[str, ...] = ()
    intercept: bool = True

    @property
    def group(self) -> str:
        """The grouping factor as written, e.g. ``"batch:cask"``."""
        return ":".join(self.factors)

    @property
    def name(self) -> str:
        """The term's name: its grouping factor, with its covariates when it has no intercept.

        ``(1|g)`` and ``(1 + x|g)`` are ``"g"``, ``(0 + x|g)`` is ``"g.x"`` (lme4's
        names for the uncorrelated terms of ``(x||g)``).
        """
        if self.intercept:
            return self.group
        return ".".join([self.group, *self.covariates])

    @property
    def coefficients(self) -> tuple[str, ...]:
        """Names of the term's coefficients: ``"(Intercept)"`` then the covariates."""
        return (("(Intercept)",) if self.intercept else ()) + self.covariates

    @property
    def text(self) -> str:
        """The term in lme4 syntax, e.g. ``"(1 + time|patient)"``."""
        lhs = " + ".join(("1" if self.intercept else "0", *self.covariates))
        return f"({lhs}|{self.group})"


@dataclass(frozen=True)
class Formula:
    """A parsed mixed-model formula.

    Attributes
    ----------
    text
        The formula as given.
    response
        The left-hand side variable, or ``None`` (``"~ ..."``).
    intercept
        Whether the fixed part has an intercept.
    fixed
        Fixed-effect terms other than the intercept, each a tuple of variable
        names (one name for a main effect, several for an interaction), ordered
        as R orders them: by degree, then by first appearance.
    random
        Random-intercept terms, in order of appearance.
    """

    text: str
    response: str | None
    intercept: bool
    fixed: tuple[tuple[str, ...], ...]
    random: tuple[RandomTerm, ...] = field(default_factory=tuple)

    @property
    def fixed_names(self) -> list[str]:
        """Names of the fixed terms (``"a"``, ``"a:b"``)."""
        return [":".join(t) for t in self.fixed]

    @property
    def random_names(self) -> list[str]:
        """Names of the random terms (``"patient"``, ``"batch:cask"``)."""
        return [t.name for t in self.random]

    @property
    def variables(self) -> list[str]:
        """Every obs column the right-hand side uses, in order of first use."""
        out: list[str] = []
        for term in (*self.fixed, *((*r.factors, *r.covariates) for r in self.random)):
            for v in term:
                if v not in out:
                    out.append(v)
        return out


# --- tokenizer --------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<name>[A-Za-z_.][A-Za-z0-9_.]*)   # R-style name
      | `(?P<quoted>[^`]+)`                   # back-quoted name
      | (?P<number>\d+(?:\.\d*)?)
      | (?P<op>\|\||[~+\-*/:()|^,\[\]{}=<>!&$@%'"]|\S)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Tok:
    kind: str  # "name", "number", "op", "end"
    value: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        # the last alternative matches any non-space, and one group always matches
        assert m is not None and m.lastgroup is not None
        kind = m.lastgroup
        start = m.start(kind)
        if kind == "quoted":
            toks.append(_Tok("name", m.group("quoted"), start))
        else:
            toks.append(_Tok(kind, m.group(kind), start))
        pos = m.end()
    toks.append(_Tok("end", "", len(text)))
    return toks


# --- parser -----------------------------------------------------------------
# A parsed right-hand side is a list of items. Fixed terms are frozensets of
# variable names (the empty set is the intercept), kept with their order of
# appearance; random intercepts are RandomTerm objects. Removal ("- term") is
# tracked separately.


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    # helpers
    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def error(self, msg: str, tok: _Tok | None = None) -> FormulaError:
        tok = tok or self.peek()
        pointer = " " * tok.pos + "^"
        return FormulaError(f"{msg}\n  {self.text}\n  {pointer}")

    def expect(self, value: str) -> _Tok:
        tok = self.peek()
        if tok.kind != "op" or tok.value != value:
            found = "end of formula" if tok.kind == "end" else repr(tok.value)
            raise self.error(f"Expected {value!r} but found {found}.", tok)
        return self.take()

    def at(self, *values: str) -> bool:
        tok = self.peek()
        return tok.kind == "op" and tok.value in values

    # grammar
    def formula(self):
        response = None
        if not self.at("~"):
            tok = self.peek()
            if tok.kind != "name":
                raise self.error("A formula starts with '~' (or 'response ~').", tok)
            response = self.take().value
            if not self.at("~"):
                raise self.error(
                    "Expected '~' after the response. Only a single column name may "
                    "stand left of '~'."
                )
        self.expect("~")
        added, removed = self.sum_()
        if self.peek().kind != "end":
            raise self.error(f"Unexpected {self.peek().value!r}.")
        return response, added, removed

    def sum_(self) -> tuple[list, list]:
        """Terms separated by ``+`` and ``-``: the lists of added and removed items."""
        added: list = []
        removed: list = []
        sign = "+"
        if self.at("+", "-"):
            sign = self.take().value
        while True:
            items = self.product()
            (added if sign == "+" else removed).extend(items)
            if self.at("+", "-"):
                sign = self.take().value
                continue
            break
        return added, removed

    def product(self):
        left = self.interaction()
        while self.at("*", "/"):
            op = self.take()
            right = self.interaction()
            _no_random(self, left, op)
            _no_random(self, right, op)
            if op.value == "*":
                left = _unique(left + right + _cross(left, right))
            else:  # a/b = a + a:b where a:b uses every variable of a
                outer = frozenset().union(*left) if left else frozenset()
                left = _unique(left + [outer | t for t in right])
        return left

    def interaction(self):
        left = self.atom()
        while self.at(":"):
            op = self.take()
            right = self.atom()
            _no_random(self, left, op)
            _no_random(self, right, op)
            left = _unique(_cross(left, right))
        return left

    # one branch per kind of token the grammar allows here, each with its own error
    # message: split up, the grammar would be harder to read
    def atom(self):  # noqa: C901
        tok = self.peek()
        if tok.kind == "name":
            self.take()
            if self.at("("):
                raise self.error(
                    f"Function calls such as {tok.value}(...) are not supported: "
                    "formulas are never evaluated. Add the transformed variable as a "
                    "column of obs and use its name.",
                    tok,
                )
            return [frozenset([tok.value])]
        if tok.kind == "number":
            self.take()
            if tok.value in ("0", "1"):
                return [_Intercept(tok.value == "1")]
            raise self.error(f"Unexpected number {tok.value}: only 0 and 1 may appear.", tok)
        if self.at("("):
            self.take()
            start = self.i
            # a bar term (... | ...) or a parenthesised sum
            depth, j = 0, self.i
            bar = None
            while self.toks[j].kind != "end":
                t = self.toks[j]
                if t.kind == "op" and t.value == "(":
                    depth += 1
                elif t.kind == "op" and t.value == ")":
                    if depth == 0:
                        break
                    depth -= 1
                elif t.kind == "op" and t.value in ("|", "||") and depth == 0:
                    bar = t
                    break
                j += 1
            if bar is not None:
                return self.bar_term(start, bar)
            added, removed = self.sum_()
            if removed:
                raise self.error("'-' is not supported inside parentheses.")
            self.expect(")")
            return added
        if tok.kind == "end":
            raise self.error("The formula ends where a term was expected.", tok)
        raise self.error(f"Unexpected {tok.value!r}.", tok)

    def bar_term(self, start: int, bar: _Tok):
        """``(lhs|groups)`` or ``(lhs||groups)``: one term per grouping, split by ``||``."""
        end = self.toks.index(bar)
        intercept, covariates = self.bar_lhs(self.toks[start:end], bar)
        self.i = end + 1
        groups = self.grouping()
        self.expect(")")
        terms = []
        for g in groups:
            if bar.value == "|":
                terms.append(RandomTerm(g, covariates, intercept))
                continue
            # uncorrelated: lme4 makes one term of every coefficient
            if intercept:
                terms.append(RandomTerm(g))
            terms.extend(RandomTerm(g, (x,), False) for x in covariates)
        return terms

    def bar_lhs(self, toks: list[_Tok], bar: _Tok) -> tuple[bool, tuple[str, ...]]:
        """The left of a bar: whether it has an intercept, and its covariates.

        A sum of ``1``, ``0`` and column names (``- 1`` removes the intercept).
        """
        if not toks:
            raise self.error("A random term needs a left-hand side, e.g. (1|group).", bar)
        intercept, covariates, sign = True, [], "+"
        want_term = True
        for tok in toks:
            if tok.kind == "op" and tok.value in ("+", "-"):
                if not want_term or tok is toks[0]:
                    sign, want_term = tok.value, True
                    continue
            elif want_term and tok.kind == "number" and tok.value in ("0", "1"):
                intercept = (tok.value == "1") == (sign == "+")
                want_term = False
                continue
            elif want_term and tok.kind == "name" and sign == "+":
                if tok.value in covariates:
                    raise self.error(f"{tok.value!r} appears twice in a random term.", tok)
                covariates.append(tok.value)
                want_term = False
                continue
            raise self.error(
                "The left of '|' may only be a sum of 1, 0 and column names (covariates "
                "whose slopes vary by group), e.g. (1 + time|patient); interactions, "
                "removed covariates and functions are not supported there.",
                tok,
            )
        if want_term:
            raise self.error("A random term's left-hand side ends with an operator.", bar)
        if not intercept and not covariates:
            raise self.error("A random term without intercept needs a covariate: (0 + x|g).", bar)
        return intercept, tuple(covariates)

    def grouping(self) -> list[tuple[str, ...]]:
        """Parse ``g``, ``a:b``, ``a/b`` (= ``a + a:b``), ``a/b/c``."""
        levels: list[tuple[str, ...]] = []
        current: tuple[str, ...] = ()
        while True:
            tok = self.peek()
            if tok.kind != "name":
                raise self.error(
                    "A grouping factor after '|' must be a column name, an "
                    "interaction a:b or a nesting a/b.",
                    tok,
                )
            part = [self.take().value]
            while self.at(":"):
                self.take()
                nxt = self.peek()
                if nxt.kind != "name":
                    raise self.error("Expected a column name after ':'.", nxt)
                part.append(self.take().value)
            current = current + tuple(part)
            levels.append(current)
            if self.at("/"):
                self.take()
                continue
            break
        return levels


@dataclass(frozen=True)
class _Intercept:
    present: bool


def _no_random(parser: _Parser, items: list, op: _Tok) -> None:
    if any(isinstance(t, (RandomTerm, _Intercept)) for t in items):
        raise parser.error(
            f"'{op.value}' cannot combine a random term or an intercept with other terms.",
            op,
        )


def _cross(left: list, right: list) -> list:
    return [a | b for a in left for b in right]


def _unique(items: list) -> list:
    out: list = []
    for t in items:
        if t not in out:
            out.append(t)
    return out


def parse_formula(text: str) -> Formula:
    """Parse a formula in lme4 syntax.

    Parameters
    ----------
    text
        For example ``"~ log_umi + (1|patient) + (1|chemistry)"``.

    Returns
    -------
    The parsed :class:`Formula`.

    Raises
    ------
    FormulaError
        If the text does not parse, or repeats a random term.
    """
    if not isinstance(text, str):
        raise FormulaError(f"The formula must be a string, got {type(text).__name__}.")
    parser = _Parser(text)
    response, added, removed = parser.formula()
    intercept, fixed, random = _collect_terms(added, removed, text)
    # variable order = first appearance in the formula text (R keeps this order
    # within interaction labels)
    order: dict[str, int] = {}
    for tok in parser.toks:
        if tok.kind == "name" and tok.value not in order:
            order[tok.value] = len(order)
    terms = [tuple(sorted(t, key=order.__getitem__)) for t in fixed]
    # R orders terms by degree, keeping the order of appearance within a degree
    terms = sorted(terms, key=len)
    if response is not None and any(response in t for t in terms):
        raise FormulaError(f"The response {response!r} also appears on the right-hand side.")
    return Formula(
        text=text,
        response=response,
        intercept=intercept,
        fixed=tuple(terms),
        random=tuple(random),
    )


def _collect_terms(
    added: list, removed: list, text: str
) -> tuple[bool, list[frozenset], list[RandomTerm]]:
    """The intercept, fixed and random terms left once the removed ones are taken out."""
    intercept = True
    fixed: list[frozenset] = []
    random: list[RandomTerm] = []
    for item in added:
        if isinstance(item, _Intercept):
            intercept = item.present
        elif isinstance(item, RandomTerm):
            same = next((r for r in random if r.name == item.name), None)
            if same == item:
                raise FormulaError(f"The random term {item.text} appears twice in {text!r}.")
            if same is not None:
                raise FormulaError(
                    f"{same.text} and {item.text} in {text!r} both give {item.group!r} a "
                    "random intercept, whose variance they cannot share. Write the slope "
                    f"without intercept, (0 + x|{item.group}), or keep one of them."
                )
            random.append(item)
        elif item not in fixed:
            fixed.append(item)
    for item in removed:
        if isinstance(item, _Intercept):
            if item.present:  # "- 1"
                intercept = False
        elif isinstance(item, RandomTerm):
            raise FormulaError(f"Random terms cannot be removed with '-' in {text!r}.")
        elif item in fixed:
            fixed.remove(item)
    return intercept, fixed, random

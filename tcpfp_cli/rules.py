"""``--deny`` rules: which connections ``serve`` refuses, decided from their fields.

A rules file holds one rule per line::

    # Mozi-like SYN stacks
    FINGERPRINT_TCP_OPTIONS = 2,4,8,1,3 and ITTL = 64 and TCP_WSCALE <= 5 -> 403
    FINGERPRINT_OS ~ "*embedded*" -> close

Grammar (``and`` binds tighter than ``or``; parentheses group)::

    rule       := expr "->" action
    expr       := term ("or" term)*
    term       := factor ("and" factor)*
    factor     := "(" expr ")" | FIELD OP VALUE
    OP         := "=" | "!=" | "<" | "<=" | ">" | ">=" | "~"
    VALUE      := '"' text with \\" and \\\\ escapes '"' | a bare word
    action     := "close" | "403"

Strategy.  Everything that can be wrong with a rule is found here, when the
file is read, and reported with its file and line (``RuleError``); nothing is
looked up by name or parsed when a connection arrives.  Each comparison is
compiled once into a closure over the field's ``read`` and an already typed
operand (an ``int`` for the numeric fields, a compiled regular expression for
a glob), and ``and``/``or`` into closures over those, so evaluating a rule is
a few Python calls.  The module is pure: ``serve`` decides what to do with
the rule that matched.

Semantics, documented once (docs/blocking.md):

- A field's value is compared as the field table reads it: numbers for the
  ``int`` fields, text otherwise (``<`` and ``>`` then compare text).
- A missing value (rendered ``-``) equals only ``-``: ``= -`` tests that a
  value is missing, ``!= -`` that it exists, and ``!= X`` holds for a missing
  value.  ``<``, ``<=``, ``>``, ``>=`` and ``~`` never hold for it.
- ``~`` is a case-sensitive shell glob (``fnmatch``) on the value's log text.
- Rules are tried in file order; the first that matches wins.
- ``FINGERPRINT_REQ_*`` fields are known only once a request arrives, so
  only ``403`` rules may use them; such a rule is skipped at accept and
  tried when each request arrives.
"""

from __future__ import annotations

import fnmatch
import operator
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from .errors import TcpfpError, UnknownField
from .fields import Field, Observation, lookup

Test = Callable[[Observation], bool]

ACTIONS = ("close", "403")
OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "~")
_MEMO_LIMIT = 1 << 16
#: Fields a rule may not use: the rule's own outcome.
NOT_IN_RULES = ("FINGERPRINT_DENY",)

_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATOR = re.compile(r"[=!<>~]+")
_BARE = re.compile(r'(?:(?!->)[^\s()"])+')
_WORD = re.compile(r"[A-Za-z0-9_]+")
_NUMBER = re.compile(r"-?[0-9]+")
_LINES = re.compile(r"\r\n|\r|\n")


class RuleError(TcpfpError):
    """A rule that cannot be used; ``source`` and ``line`` say where it is."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        self.source = source
        self.line = line
        self.reason = reason
        super().__init__(f"{source}:{line}: {reason}")


class Rule(NamedTuple):
    """One compiled rule."""

    line: int  # in its file, from 1
    action: str  # "close" or "403"
    condition: str  # as written, before "->"
    test: Test
    request_time: bool  # uses a FINGERPRINT_REQ_* field
    fields: tuple[Field, ...] = ()  # the fields its condition reads

    @property
    def tag(self) -> str:
        """What FINGERPRINT_DENY shows: ``LINE:ACTION``, one token, e.g. ``3:close``."""
        return f"{self.line}:{self.action}"


class _Run(NamedTuple):
    """Consecutive accept-time rules; ``key`` and ``memo`` None: evaluate them every time."""

    rules: tuple[Rule, ...]
    key: Callable[[Observation], tuple] | None  # the values the rules read, as a memo key
    memo: dict[tuple, Rule | None] | None


def _key_of(fields: list[Field]) -> Callable[[Observation], tuple]:
    """A function giving the values of ``fields`` in ``obs`` (a run's memo key).

    Fingerprint members are fetched by one ``attrgetter`` on the Fingerprint (all
    ``None`` when there is none, as their reads give); other fields by their reads.
    """
    members = tuple(dict.fromkeys(f.member for f in fields if f.member is not None))
    reads = tuple(dict.fromkeys(f.read for f in fields if f.member is None))
    if not members:
        return lambda obs: tuple([read(obs) for read in reads])
    get = operator.attrgetter(*members)
    missing = (None,) * len(members) if len(members) > 1 else None
    if not reads:
        return lambda obs: (missing if (fp := obs.fingerprint) is None else get(fp),)
    return lambda obs: (missing if (fp := obs.fingerprint) is None else get(fp),
                        *[read(obs) for read in reads])


class RuleSet:
    """The rules of one file, in order, ready to evaluate."""

    def __init__(self, rules: Iterable[Rule], source: str = "<rules>") -> None:
        self.rules = tuple(rules)
        self.source = source
        #: Some 403 rule needs the request's TCP_INFO (so read it at each request).
        self.request_time = any(r.request_time for r in self.rules)
        self._at_request = tuple((r.test, r) for r in self.rules if r.action == "403")
        # A rule's outcome is a function of the values its fields read, and
        # connections repeat those values (one stack, one TTL).  So the
        # accept-time rules are cut into runs: a run of rules that read only
        # such values is answered from memory, per tuple of the values it
        # reads; a rule that reads a value new on every connection (IP ID,
        # timestamps, flow label, RTT, accept time) is evaluated each time.
        runs: list[tuple[list[Rule], bool]] = []  # (rules, remembered)
        for rule in (r for r in self.rules if not r.request_time):
            remembered = not any(_per_connection(f) for f in rule.fields)
            if remembered and runs and runs[-1][1]:
                runs[-1][0].append(rule)
            else:
                runs.append(([rule], remembered))
        self._accept_runs = tuple(
            _Run(tuple(rules), _key_of([f for r in rules for f in r.fields]), {}) if remembered
            else _Run(tuple(rules), None, None)
            for rules, remembered in runs)

    def __len__(self) -> int:
        return len(self.rules)

    def at_accept(self, obs: Observation) -> Rule | None:
        """The first rule that matches what is known at accept (request-time rules skipped)."""
        for rules, key_of, memo in self._accept_runs:
            if memo is None:
                for rule in rules:
                    if rule.test(obs):
                        return rule
                continue
            key = key_of(obs)  # type: ignore[misc]
            if key in memo:
                found = memo[key]
            else:
                found = next((rule for rule in rules if rule.test(obs)), None)
                if len(memo) >= _MEMO_LIMIT:
                    memo.clear()
                memo[key] = found
            if found is not None:
                return found
        return None

    def at_request(self, obs: Observation) -> Rule | None:
        """The first ``403`` rule that matches, once a request has arrived."""
        for test, rule in self._at_request:
            if test(obs):
                return rule
        return None

    def first(self, obs: Observation) -> Rule | None:
        """The first rule that matches ``obs``, with everything known."""
        for rule in self.rules:
            if rule.test(obs):
                return rule
        return None


def _per_connection(field: Field) -> bool:
    """A field whose value differs on (nearly) every connection of the same client."""
    return field.member in ("ip_id", "ts_val", "ts_ecr", "flow_label") or field.source in (
        "tcp_info", "tcp_info_now", "connection")


# --------------------------------------------------------------------------- reading


def load_rules(path: str | Path) -> RuleSet:
    """Read and compile a rules file; ``RuleError`` names the file and line of a bad rule."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark is no part of line 1
    except OSError as error:
        raise TcpfpError(f"--deny {source}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise TcpfpError(f"--deny {source}: not UTF-8 text") from None
    return parse_rules(text, source)


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    rules = []
    # Lines end at LF, CR LF or CR only: not at the other breaks ``str.splitlines`` knows
    # (form feed, NEL, U+2028...), which would renumber the rules and could end a comment.
    for number, line in enumerate(_LINES.split(text), 1):
        rule = parse_rule(line, number, source)
        if rule is not None:
            rules.append(rule)
    return RuleSet(rules, source)


def parse_rule(line: str, number: int = 1, source: str = "<rules>") -> Rule | None:
    """One line: a compiled ``Rule``, or None for a blank or comment line."""
    return _Parser(line, number, source).rule()


class _Parser:
    """Recursive descent over one line, compiling as it goes."""

    def __init__(self, line: str, number: int, source: str) -> None:
        self.text = line
        self.pos = 0
        self.number = number
        self.source = source
        self.fields: list[Field] = []

    # -- helpers ---------------------------------------------------------------
    def fail(self, reason: str) -> RuleError:
        return RuleError(self.source, self.number, reason)

    def skip(self) -> bool:
        """Skip spaces; False at the end of the line or at a comment."""
        text, n = self.text, len(self.text)
        while self.pos < n and text[self.pos].isspace():
            self.pos += 1
        if self.pos >= n:
            return False
        if text[self.pos] == "#" and (self.pos == 0 or text[self.pos - 1].isspace()):
            self.pos = n
            return False
        return True

    def column(self) -> int:
        return self.pos + 1

    def rest(self) -> str:
        return self.text[self.pos:].split()[0] if self.text[self.pos:].split() else ""

    def keyword(self, word: str) -> bool:
        match = _WORD.match(self.text, self.pos)
        if match and match.group().lower() == word:
            self.pos = match.end()
            return True
        return False

    # -- grammar ---------------------------------------------------------------
    def rule(self) -> Rule | None:
        if not self.skip():
            return None
        test = self.expr()
        if not self.skip() or not self.text.startswith("->", self.pos):
            if self.pos < len(self.text) and self.text[self.pos] == ")":
                raise self.fail(f"unbalanced ')' at column {self.column()}")
            if self.pos < len(self.text) and self.text[self.pos] == '"':
                raise self.fail(f"unbalanced quotes: stray '\"' at column {self.column()} "
                                "(a quoted value must start and end with '\"')")
            if self.pos < len(self.text):
                raise self.fail(f"expected 'and', 'or' or '->' at column {self.column()}, "
                                f"found {self.rest()!r}")
            raise self.fail("missing action: end the rule with '-> close' or '-> 403'")
        condition = self.text[: self.pos].strip()
        self.pos += 2
        if not self.skip():
            raise self.fail("missing action after '->': expected close or 403")
        match = _BARE.match(self.text, self.pos)
        action = match.group() if match else self.text[self.pos]
        if action.lower() not in ACTIONS:
            raise self.fail(f"unknown action {action!r}: expected close or 403")
        self.pos += len(action)
        if self.skip():
            raise self.fail(f"unexpected text after the action at column {self.column()}: {self.rest()!r}")
        action = action.lower()
        request_fields = [f.name for f in self.fields if f.source == "tcp_info_now"]
        if action == "close" and request_fields:
            raise self.fail(f"{request_fields[0]} is only known once a request arrives, so a "
                            "'close' rule (applied at accept) cannot use it; use '-> 403'")
        return Rule(self.number, action, condition, test, bool(request_fields),
                    tuple(dict.fromkeys(self.fields)))

    def expr(self) -> Test:
        terms = [self.term()]
        while self.skip() and self.keyword("or"):
            terms.append(self.term())
        return _any(terms)

    def term(self) -> Test:
        factors = [self.factor()]
        while self.skip() and self.keyword("and"):
            factors.append(self.factor())
        return _all(factors)

    def factor(self) -> Test:
        if not self.skip():
            raise self.fail("incomplete condition: expected a field name at the end of the line")
        if self.text[self.pos] == "(":
            opened = self.column()
            self.pos += 1
            test = self.expr()
            if not self.skip() or self.text[self.pos] != ")":
                raise self.fail(f"unbalanced '(' at column {opened}: missing ')'")
            self.pos += 1
            return test
        return self.comparison()

    def comparison(self) -> Test:
        match = _FIELD.match(self.text, self.pos)
        if match is None:
            raise self.fail(f"expected a field name at column {self.column()}, found {self.rest()!r}")
        name = match.group()
        try:
            field = lookup(name)
        except UnknownField as error:
            raise self.fail(str(error)) from None
        if field.name in NOT_IN_RULES:
            raise self.fail(f"{field.name} cannot be used in a rule")
        self.pos = match.end()
        self.fields.append(field)
        if not self.skip():
            raise self.fail(f"missing operator after {name}: expected one of {' '.join(OPERATORS)}")
        match = _OPERATOR.match(self.text, self.pos)
        if match is None or match.group() not in OPERATORS:
            found = match.group() if match else self.rest()
            raise self.fail(f"bad operator {found!r} after {name} at column {self.column()}: "
                            f"expected one of {' '.join(OPERATORS)}")
        op = match.group()
        self.pos = match.end()
        value = self.value(f"{name} {op}")
        return self.compile(field, op, value)

    def value(self, after: str) -> str:
        if not self.skip():
            raise self.fail(f"missing value after '{after}'")
        text = self.text
        if text[self.pos] == '"':
            start, i, out = self.pos, self.pos + 1, []
            while i < len(text):
                char = text[i]
                if char == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
                    out.append(text[i + 1])
                    i += 2
                elif char == '"':
                    self.pos = i + 1
                    return "".join(out)
                else:
                    out.append(char)
                    i += 1
            raise self.fail(f'unbalanced quotes: the value at column {start + 1} has no closing \'"\'')
        match = _BARE.match(text, self.pos)
        if match is None:
            raise self.fail(f"missing value after '{after}' at column {self.column()}")
        self.pos = match.end()
        return match.group()

    def compile(self, field: Field, op: str, value: str) -> Test:
        """The closure for ``field op value``, with the operand typed now."""
        read = field.read
        if value == "-":
            if op == "=":
                return lambda obs: read(obs) is None
            if op == "!=":
                return lambda obs: read(obs) is not None
            raise self.fail(f"'{op} -' compares with a missing value: use '= -' or '!= -'")
        if op == "~":
            match = re.compile(fnmatch.translate(value), re.DOTALL).match
            if field.kind == "int":
                return lambda obs: (v := read(obs)) is not None and match(str(v)) is not None
            return lambda obs: (v := read(obs)) is not None and match(v) is not None
        operand: int | str = value
        if field.kind == "int":
            if not _NUMBER.fullmatch(value):
                raise self.fail(f"bad number {value!r} for {field.name}, which holds integers")
            operand = int(value)
        if op == "=":
            return lambda obs: read(obs) == operand
        if op == "!=":
            return lambda obs: read(obs) != operand
        compare = _ORDER[op]
        return lambda obs: (v := read(obs)) is not None and compare(v, operand)


def _all(tests: list[Test]) -> Test:
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        a, b = tests
        return lambda obs: a(obs) and b(obs)
    every = tuple(tests)

    def all_of(obs: Observation) -> bool:
        for test in every:
            if not test(obs):
                return False
        return True

    return all_of


def _any(tests: list[Test]) -> Test:
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        a, b = tests
        return lambda obs: a(obs) or b(obs)
    some = tuple(tests)

    def any_of(obs: Observation) -> bool:
        for test in some:
            if test(obs):
                return True
        return False

    return any_of


__all__ = ["ACTIONS", "OPERATORS", "Rule", "RuleError", "RuleSet", "load_rules", "parse_rule", "parse_rules"]

"""Which calls of a statement a function or operator of another role could capture.

PostgreSQL resolves a function or operator written without a schema by looking through every
schema of the search_path (pg_catalog first, unless the path names it later) and choosing the
best match for the types of the arguments as the parser sees them (CVE-2018-1058). Where the
built-in it chose declares exactly those types, a function of the same name and argument types in
another schema is hidden by pg_catalog's. Where it does not (the argument needed an implicit cast,
or was an untyped literal, or the built-in takes a polymorphic, `"any"` or variadic argument), a
function or operator whose parameters are exactly the argument types wins over the built-in: a
role that can CREATE in any schema on the path can plant it.

This module reads the server's own analysis of a statement (the parse tree that
`debug_print_parse` prints: every call with the function or operator it resolved to and its
arguments, with the implicit casts the parser added around them) and, for each call, compares
the types the parser resolved it with to the ones the resolved built-in declares:

- an argument's type is its type before any implicit cast the parser added (a `RelabelType`,
  `CoerceViaIO`, `ArrayCoerceExpr`, cast function or domain coercion of implicit format);
- an untyped string literal or NULL (a constant whose source text is not followed by `::`, not
  inside `CAST(`, not after a type name) is `unknown`: a function planted with `text` there wins
  (the parser prefers the string category, and text within it), an operator planted with the
  other operand's type wins (an unknown operand is taken to be of the other operand's type);
- a call written `pg_catalog.name(...)` or `OPERATOR(pg_catalog.op)` looks in pg_catalog only.

A call whose planted signature differs from the built-in's declared one is shadowable. The
nodes read: function calls (`FuncExpr` written as a call; casts are looked up in pg_cast, and
`COERCE_SQL_SYNTAX` calls are pg_catalog-qualified), operators (`OpExpr`, `DistinctExpr` for
IS DISTINCT FROM, `NullIfExpr`, `ScalarArrayOpExpr` for IN and ANY/ALL, `RowCompareExpr`),
aggregates and window functions. Anything else resolved by name with argument types (ORDER BY
... USING) is not in the docs; an unknown node type that holds a function or operator fails.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator

import psycopg

UNKNOWN = 705
TEXT = 25
ANY = 2276
IMPLICIT = 2  # CoercionForm COERCE_IMPLICIT_CAST
EXPLICIT_CALL = 0  # CoercionForm COERCE_EXPLICIT_CALL: a FuncExpr written as a call


# --- reading a node tree ---------------------------------------------------------------------


@dataclasses.dataclass
class Node:
    """One `{NAME :field value ...}` of a node tree; a field holds a str, a Node, a list or None."""

    kind: str
    fields: dict[str, object]

    def __getitem__(self, name: str) -> object:
        return self.fields[name]

    def get(self, name: str) -> object:
        return self.fields.get(name)

    def number(self, name: str) -> int:
        value = self.fields[name]
        assert isinstance(value, str), f"{self.kind}.{name}: expected a number, got {value!r}"
        return int(value)

    def node(self, name: str) -> Node:
        value = self.fields[name]
        assert isinstance(value, Node), f"{self.kind}.{name}: expected a node, got {value!r}"
        return value

    def nodes(self, name: str) -> list[Node]:
        value = self.fields.get(name)
        if value is None:
            return []
        assert isinstance(value, list) and all(isinstance(v, Node) for v in value), f"{self.kind}.{name}: {value!r}"
        return list(value)  # type: ignore[arg-type]

    def oids(self, name: str) -> list[int]:
        """An `(o 1 2 3)` list."""
        value = self.fields.get(name)
        if value is None:
            return []
        assert isinstance(value, list) and value[:1] == ["o"], f"{self.kind}.{name}: expected an oid list"
        return [int(v) for v in value[1:]]  # type: ignore[arg-type]


PUNCTUATION = "(){}"


def _tokens(text: str) -> list[tuple[bool, str]]:
    """The tokens of nodeToString output as the server reads them back (pg_strtok): runs split by
    white space and ( ) { }, a backslash protecting the next character. True marks punctuation.
    The server wraps long dumps at a space, so a line break is white space too."""
    found: list[tuple[bool, str]] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
        elif char in PUNCTUATION:
            found.append((True, char))
            i += 1
        else:
            word = []
            while i < len(text) and not text[i].isspace() and text[i] not in PUNCTUATION:
                if text[i] == "\\" and i + 1 < len(text):
                    i += 1
                word.append(text[i])
                i += 1
            found.append((False, "".join(word)))
    return found


def read_tree(text: str) -> object:
    """A dump of `debug_print_parse` (one Query, or a list of them) as Nodes, lists and strings."""
    tokens = _tokens(text)
    value, end = _value(tokens, 0)
    assert end == len(tokens), f"unread tokens after position {end} of {len(tokens)}"
    return value


def _value(tokens: list[tuple[bool, str]], at: int) -> tuple[object, int]:
    punctuation, token = tokens[at]
    if not punctuation:
        return (None if token == "<>" else token), at + 1
    if token == "(":
        items = []
        at += 1
        while tokens[at] != (True, ")"):
            item, at = _value(tokens, at)
            items.append(item)
        return items, at + 1
    assert token == "{", f"unexpected {token!r} at token {at}"
    kind = tokens[at + 1][1]
    fields: dict[str, object] = {}
    at += 2
    while tokens[at] != (True, "}"):
        name = tokens[at][1]
        if tokens[at][0] or not name.startswith(":"):
            name = ":"  # a value before the first field ({A_CONST NULL ...})
        else:
            at += 1
        values = []
        while tokens[at] != (True, "}") and (tokens[at][0] or not tokens[at][1].startswith(":")):
            value, at = _value(tokens, at)
            values.append(value)
        fields[name[1:]] = values[0] if len(values) == 1 else (values or None)
    return Node(kind, fields), at + 1


def walk(value: object, analyzed: bool = False) -> Iterator[tuple[Node, bool]]:
    """Every node of a tree, parents first, each with whether it is analyzed: inside a Query and
    not in the raw statement of a utility command (whose analyzed parts, an EXPLAIN's query,
    are Query nodes of their own)."""
    if isinstance(value, Node):
        yield value, analyzed
        for name, child in value.fields.items():
            if value.kind == "QUERY":
                yield from walk(child, name != "utilityStmt")
            else:
                yield from walk(child, analyzed)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item, analyzed)


# --- the catalog -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The function or operator a call resolved to, as the catalog has it."""

    schema: str
    name: str
    declared: tuple[int, ...]  # pg_proc.proargtypes; an operator's (oprleft, oprright), 0 for none
    variadic: int  # pg_proc.provariadic: the element type of a VARIADIC parameter, 0 for none


class Catalog:
    """Catalog look-ups on one connection, cached."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self._type_words: dict[str, bool] = {}
        self._type_names: dict[int, str] = {}

    def _one(self, query: str, *params: object) -> tuple[object, ...]:
        row = self.conn.execute(query, params).fetchone()
        assert row is not None, f"no row for {params}: {query}"
        return tuple(row)

    def is_type_name(self, word: str) -> bool:
        """Whether `word` names a type (INTERVAL in INTERVAL '1 hour'); a keyword (THEN) is none."""
        if word not in self._type_words:
            try:
                with self.conn.transaction():
                    self._type_words[word] = bool(self._one("SELECT pg_catalog.to_regtype(%s) IS NOT NULL", word)[0])
            except psycopg.Error:  # a keyword (THEN) is a syntax error there
                self._type_words[word] = False
        return self._type_words[word]

    def type_name(self, oid: int) -> str:
        if oid not in self._type_names:
            self._type_names[oid] = str(self._one("SELECT pg_catalog.format_type(%s, NULL)", oid)[0])
        return self._type_names[oid]

    def array_of(self, oid: int) -> int:
        return int(str(self._one("SELECT typarray FROM pg_catalog.pg_type WHERE oid = %s", oid)[0]))

    def element_of(self, oid: int) -> int:
        return int(str(self._one("SELECT typelem FROM pg_catalog.pg_type WHERE oid = %s", oid)[0]))

    def function(self, oid: int) -> Resolved:
        schema, name, declared, variadic = self._one(
            """SELECT n.nspname, p.proname, p.proargtypes::OID [], p.provariadic
            FROM pg_catalog.pg_proc AS p JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
            WHERE p.oid = %s""",
            oid,
        )
        assert isinstance(declared, list)
        return Resolved(str(schema), str(name), tuple(int(t) for t in declared), int(str(variadic)))

    def operator(self, oid: int) -> Resolved:
        schema, name, left, right = self._one(
            """SELECT n.nspname, o.oprname, o.oprleft, o.oprright
            FROM pg_catalog.pg_operator AS o JOIN pg_catalog.pg_namespace AS n ON n.oid = o.oprnamespace
            WHERE o.oid = %s""",
            oid,
        )
        return Resolved(str(schema), str(name), (int(str(left)), int(str(right))), 0)


# --- the calls of a statement ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Call:
    """A function or operator call as the parser resolved it, and what could capture it."""

    kind: str  # function | aggregate | window function | operator
    resolved: Resolved
    args: tuple[int, ...]  # the argument types as the parser saw them; UNKNOWN for an untyped literal
    location: int  # byte offset of the call in its source text, -1 if none
    qualified: bool  # written pg_catalog.name( or OPERATOR(pg_catalog.op)
    spread: bool = False  # VARIADIC arguments passed one by one

    @property
    def declared(self) -> tuple[int, ...]:
        """The built-in's parameter types at the call's arguments (VARIADIC ones repeated,
        defaulted ones dropped)."""
        declared = self.resolved.declared
        if self.kind == "operator":
            return declared if declared[0] else declared[1:]  # a prefix operator has no left
        if self.spread:
            return declared[:-1] + (self.resolved.variadic,) * (len(self.args) - len(declared) + 1)
        return declared[: len(self.args)]

    @property
    def planted(self) -> tuple[int, ...]:
        """The parameter types of a function or operator in another schema that would be chosen
        over the built-in, if it is not the built-in's own: an untyped literal is text for a
        function, the other operand's type for an operator."""
        if self.kind != "operator" or len(self.args) != 2:
            return tuple(TEXT if t == UNKNOWN else t for t in self.args)
        left, right = self.args
        if left == UNKNOWN and right == UNKNOWN:
            return (TEXT, TEXT)
        return (right if left == UNKNOWN else left, left if right == UNKNOWN else right)

    @property
    def shadowable(self) -> bool:
        return not self.qualified and self.planted != self.declared


def calls(tree: object, source: bytes, catalog: Catalog) -> list[Call]:
    """The calls of an analyzed statement that the parser resolved by name and argument types,
    with the types of their arguments as the parser saw them. `source` is the text the
    statement's locations point into."""

    def argument(node: Node) -> int:
        written = uncoerced(node)
        if written.kind == "CONST" and is_untyped_literal(source, written.number("location"), catalog.is_type_name):
            return UNKNOWN
        return expression_type(written, catalog)

    def element(node: Node) -> int:
        """The element type the parser looked up = ANY (...) and IN (...) with."""
        written = uncoerced(node)
        if written.kind == "CONST" and is_untyped_literal(source, written.number("location"), catalog.is_type_name):
            return UNKNOWN
        if written.kind == "ARRAYEXPR":
            return written.number("element_typeid")
        return catalog.element_of(expression_type(written, catalog))

    found = []
    for node, analyzed in walk(tree):
        if not analyzed:
            continue
        location = int(str(node.get("location") or -1))
        at = (location, _qualified(source, location))
        if node.kind == "FUNCEXPR":
            if node.number("funcformat") != EXPLICIT_CALL:
                continue  # a cast (found in pg_cast), or SQL syntax calling pg_catalog's
            resolved = catalog.function(node.number("funcid"))
            arguments = node.nodes("args")
            if any(a.kind == "NAMEDARGEXPR" for a in arguments):
                raise AssertionError(f"{resolved.name}: a call with named arguments is not read here")
            args = tuple(argument(a) for a in arguments)
            last = uncoerced(arguments[-1]) if arguments else None
            keyword = last is not None and WRITTEN_VARIADIC.search(code_before(source, last.number("location")))
            spread = resolved.variadic == ANY and not keyword
            if resolved.variadic not in (0, ANY) and last is not None and last.kind == "ARRAYEXPR" and not keyword:
                # the array the parser made of the arguments passed to a VARIADIC parameter
                args, spread = args[:-1] + tuple(argument(e) for e in last.nodes("elements")), True
            found.append(Call("function", resolved, args, *at, spread))
        elif node.kind in ("OPEXPR", "DISTINCTEXPR", "NULLIFEXPR"):
            args = tuple(argument(a) for a in node.nodes("args"))
            found.append(Call("operator", catalog.operator(node.number("opno")), args, *at))
        elif node.kind == "SCALARARRAYOPEXPR":
            left, right = node.nodes("args")
            args = (argument(left), element(right))
            found.append(Call("operator", catalog.operator(node.number("opno")), args, *at))
        elif node.kind == "ROWCOMPAREEXPR":
            for opno, left, right in zip(node.oids("opnos"), node.nodes("largs"), node.nodes("rargs"), strict=True):
                found.append(Call("operator", catalog.operator(opno), (argument(left), argument(right)), *at))
        elif node.kind == "AGGREF":
            # the aggregated arguments; ORDER BY expressions that are none of them follow, resjunk
            aggregated = [t.node("expr") for t in node.nodes("args") if t.get("resjunk") != "true"]
            args = tuple(argument(a) for a in node.nodes("aggdirectargs") + aggregated)
            found.append(Call("aggregate", catalog.function(node.number("aggfnoid")), args, *at))
        elif node.kind == "WINDOWFUNC":
            args = tuple(argument(a) for a in node.nodes("args"))
            found.append(Call("window function", catalog.function(node.number("winfnoid")), args, *at))
        elif node.kind.endswith(("EXPR", "FUNC", "REF")) and node.kind not in NAMELESS:
            raise AssertionError(f"a {node.kind} node: this module does not know which calls it resolves by name")
    return found


# Node types whose exprType() is a field of their own.
RESULT_FIELD = {
    "VAR": "vartype",
    "CONST": "consttype",
    "PARAM": "paramtype",
    "FUNCEXPR": "funcresulttype",
    "OPEXPR": "opresulttype",
    "NULLIFEXPR": "opresulttype",
    "AGGREF": "aggtype",
    "WINDOWFUNC": "wintype",
    "RELABELTYPE": "resulttype",
    "COERCEVIAIO": "resulttype",
    "ARRAYCOERCEEXPR": "resulttype",
    "CONVERTROWTYPEEXPR": "resulttype",
    "COERCETODOMAIN": "resulttype",
    "FIELDSELECT": "resulttype",
    "CASEEXPR": "casetype",
    "COALESCEEXPR": "coalescetype",
    "MINMAXEXPR": "minmaxtype",
    "ARRAYEXPR": "array_typeid",
    "ROWEXPR": "row_typeid",
    "CASETESTEXPR": "typeId",
    "SQLVALUEFUNCTION": "type",
    "SUBSCRIPTINGREF": "refrestype",
}
BOOLEAN_NODES = {"BOOLEXPR", "NULLTEST", "BOOLEANTEST", "DISTINCTEXPR", "SCALARARRAYOPEXPR", "ROWCOMPAREEXPR"}
BOOL = 16
# The format field of each node that may be an implicit cast.
COERCIONS = {
    "RELABELTYPE": "relabelformat",
    "COERCEVIAIO": "coerceformat",
    "ARRAYCOERCEEXPR": "coerceformat",
    "CONVERTROWTYPEEXPR": "convertformat",
    "COERCETODOMAIN": "coercionformat",
    "FUNCEXPR": "funcformat",
}
# Analyzed nodes that resolve no function or operator by name: their operators, if any, come
# from the type's default operator class or are fixed by the grammar.
NAMELESS = {
    "BOOLEXPR",
    "CASEEXPR",
    "COALESCEEXPR",
    "MINMAXEXPR",
    "ARRAYEXPR",
    "ROWEXPR",
    "CASETESTEXPR",
    "COLLATEEXPR",
    "ARRAYCOERCEEXPR",
    "CONVERTROWTYPEEXPR",
    "FROMEXPR",
    "JOINEXPR",
    "NEXTVALUEEXPR",
    "ONCONFLICTEXPR",
    "SQLVALUEFUNCTION",
    "RANGETBLFUNCTION",
    "RANGETBLREF",
    "SUBSCRIPTINGREF",
    "GROUPINGFUNC",
    "CURRENTOFEXPR",
}


def expression_type(node: Node, catalog: Catalog) -> int:
    """exprType() of an analyzed node."""
    if node.kind in RESULT_FIELD:
        return node.number(RESULT_FIELD[node.kind])
    if node.kind in BOOLEAN_NODES:
        return BOOL
    if node.kind == "COLLATEEXPR":
        return expression_type(node.node("arg"), catalog)
    if node.kind == "SUBLINK":
        link = node.number("subLinkType")
        if link in (0, 1, 2, 3):  # EXISTS, ALL, ANY, ROWCOMPARE
            return BOOL
        query = node.node("subselect")
        first = next(t for t in query.nodes("targetList") if t.get("resjunk") != "true")
        inner = expression_type(first.node("expr"), catalog)
        if link == 4:  # EXPR
            return inner
        if link == 6:  # ARRAY
            return catalog.array_of(inner)
    raise AssertionError(f"the type of a {node.kind} node is not known here")


def uncoerced(node: Node) -> Node:
    """The argument as written: without the implicit casts the parser put around it."""
    while node.kind in COERCIONS and node.number(COERCIONS[node.kind]) == IMPLICIT:
        node = node.nodes("args")[0] if node.kind == "FUNCEXPR" else node.node("arg")
    return node


STRING_LITERAL = re.compile(rb"(?:[EeBbXxNn]|[Uu]&)?'(?:[^']|'')*'|\$([A-Za-z_]\w*|)\$.*?\$\1\$|NULL\b", re.S | re.I)
# What makes the literal that follows typed: a cast opened before it, or a type name (INTERVAL '1 hour').
CAST_BEFORE = re.compile(rb"\bCAST\s*\(\s*$", re.I)
TIME_ZONE_BEFORE = re.compile(rb"\bWITH(?:OUT)?\s+TIME\s+ZONE\s*$", re.I)
# The one or two words before a literal, and a type modifier: DOUBLE PRECISION '1', VARCHAR(10) 'x'.
WORDS_BEFORE = re.compile(rb"(?:([A-Za-z_][\w.\"]*)\s+)?([A-Za-z_][\w.\"]*)(?:\s*\(\s*\d+(?:\s*,\s*\d+)?\s*\))?$")


def code_before(source: bytes, location: int) -> bytes:
    """The text before `location` without the white space and `--` comments that end it."""
    before = source[: max(location, 0)].rstrip()
    while True:
        line = before.rfind(b"\n") + 1
        comment = before.find(b"--", line)
        if comment < 0 or before[line:comment].count(b"'") % 2:
            return before
        before = before[:comment].rstrip()


def is_untyped_literal(source: bytes, location: int, is_type_name: Callable[[str], bool]) -> bool:
    """Whether the constant at `location` is a string literal or NULL that the parser saw untyped."""
    if location < 0:
        return False
    literal = STRING_LITERAL.match(source, location)
    if literal is None:
        return False
    if source[literal.end() :].lstrip().startswith(b"::"):
        return False
    before = code_before(source, location)
    if CAST_BEFORE.search(before) or TIME_ZONE_BEFORE.search(before):
        return False
    words = WORDS_BEFORE.search(before)
    if words is None:
        return True
    last = words.group(2).decode()
    two = f"{words.group(1).decode()} {last}" if words.group(1) else None
    return not ((two is not None and is_type_name(two)) or is_type_name(last))


WRITTEN_VARIADIC = re.compile(rb"\bVARIADIC\s*$", re.I)
QUALIFIED = re.compile(rb'\s*(?:OPERATOR\s*\(\s*)?"?pg_catalog"?\s*\.', re.I)


def _qualified(source: bytes, location: int) -> bool:
    """Whether the call at `location` is written pg_catalog.name( or OPERATOR(pg_catalog.op)."""
    return location >= 0 and QUALIFIED.match(source, location) is not None


# --- tracing what the server analyzes for one connection -----------------------------------
# The docs' test (tests/security/test_docs_under_traps.py) and the protocol's
# (tests/protocol/test_protocol_shadowing.py) read every statement a connection makes the server
# analyze, with the text it ran.


class Recording:
    """A connection that remembers the text it is running, for the statements the server
    reports while it runs; everything else goes to the connection."""

    def __init__(self, conn: psycopg.Connection) -> None:
        object.__setattr__(self, "conn", conn)
        object.__setattr__(self, "running", "")

    def execute(self, query: object, *args: object, **kwargs: object) -> psycopg.Cursor:
        object.__setattr__(self, "running", query if isinstance(query, str) else "")
        return self.conn.execute(query, *args, **kwargs)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)

    def __setattr__(self, name: str, value: object) -> None:
        setattr(self.conn, name, value)


@dataclasses.dataclass(frozen=True)
class Analyzed:
    """One statement the server analyzed, as debug_print_parse reported it."""

    tree: str
    context: str
    running: str  # the text the client sent, which a top-level statement's locations point into


class Tracer:
    """The parse trees of every statement the server analyzes for one connection."""

    def __init__(self, conn: Recording) -> None:
        self.conn = conn
        self.analyzed: list[Analyzed] = []
        conn.add_notice_handler(self._notice)
        conn.execute("SET debug_print_parse = on")
        conn.execute("SET debug_pretty_print = off")
        conn.execute("SET client_min_messages = log")

    def _notice(self, diagnostic: psycopg.errors.Diagnostic) -> None:
        if diagnostic.severity_nonlocalized == "LOG" and diagnostic.message_primary == "parse tree:":
            self.analyzed.append(Analyzed(diagnostic.message_detail or "", diagnostic.context or "", self.conn.running))

    def take(self) -> list[Analyzed]:
        taken, self.analyzed = self.analyzed, []
        return taken


# The statement plpgsql was running (innermost context line).
SPI_QUERY = re.compile(
    r'^(?:SQL statement|SQL expression|PL/pgSQL expression|PL/pgSQL assignment) "(?P<query>.*?)"(?:\n(?:PL/pgSQL|SQL) function |$)',
    re.S,
)

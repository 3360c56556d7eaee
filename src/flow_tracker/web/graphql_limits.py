"""How much a GraphQL request may ask for, checked before any of it runs.

A GraphQL document can ask for much more than its length suggests: nesting
makes the parser recurse (a query nested 1,000 levels deep exhausts Python's
stack inside graphql-core), aliases and fragments multiply fields (one fragment
spread twice in a fragment spread twice... doubles the work per level), and a
list field's ``limit`` multiplies rows. Each is bounded here, in the order that
keeps a refusal cheap:

1. :func:`parse_checked`: the text's length, then one pass of graphql-core's own
   lexer (a loop, no recursion) counting tokens and open brackets, and only then
   the parser (with ``max_tokens`` as well);
2. :class:`LimitsRule`, a validation rule run on its own before graphql-core's
   standard rules: depth of fields, selections after expanding fragments, and
   fields at the top (each one a database lookup);
3. :func:`checked_limit`, in the resolvers: a page is at most :data:`MAX_LIMIT` rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    parse,
)
from graphql.language import SKIP, Lexer, Source, TokenKind
from graphql.validation import ValidationRule

MAX_QUERY_CHARS = 20_000
"""The longest query text accepted (the standard introspection query is about 1,500)."""
MAX_TOKENS = 2_000
"""Tokens of a document (the standard introspection query has about 170)."""
MAX_NESTING = 30
"""Brackets (``{``, ``[``, ``(``) open at once: what makes the parser recurse."""
MAX_DEPTH = 10
"""Fields nested in one another; this schema's deepest useful path is 4."""
MAX_INTROSPECTION_DEPTH = 20
"""The same under ``__schema`` / ``__type``: introspection queries nest ``ofType`` deeply."""
MAX_SELECTIONS = 500
"""Fields, spreads and inline fragments of a document, each fragment counted where it is spread."""
MAX_TOP_FIELDS = 20
"""Fields at the top of an operation: each is a database lookup or an action."""
MAX_LIMIT = 100
"""The most rows one list field answers; more pages are one ``cursor`` away."""

_OPENING = frozenset({TokenKind.BRACE_L, TokenKind.BRACKET_L, TokenKind.PAREN_L})
_CLOSING = frozenset({TokenKind.BRACE_R, TokenKind.BRACKET_R, TokenKind.PAREN_R})
_INTROSPECTION = frozenset({"__schema", "__type"})


class TooMuchAskedError(Exception):
    """A document over one of the limits; the message says which, for the client."""


def parse_checked(query: str) -> DocumentNode:
    """``query`` parsed, once it is known to be within the size and nesting limits.

    Raises:
        TooMuchAskedError: too long, too many tokens, or nested too deeply.
        GraphQLError: not GraphQL (a syntax error, with its place).
    """
    if len(query) > MAX_QUERY_CHARS:
        raise TooMuchAskedError(
            f"the query is {len(query):,} characters long; at most {MAX_QUERY_CHARS:,} are accepted"
        )
    lexer = Lexer(Source(query))
    tokens = nesting = 0
    while True:
        kind = lexer.advance().kind
        if kind == TokenKind.EOF:
            break
        tokens += 1
        if tokens > MAX_TOKENS:
            raise TooMuchAskedError(f"the query has over {MAX_TOKENS:,} tokens")
        if kind in _OPENING:
            nesting += 1
            if nesting > MAX_NESTING:
                raise TooMuchAskedError(
                    f"the query is nested over {MAX_NESTING} levels deep; "
                    f"at most {MAX_DEPTH} levels of fields are answered"
                )
        elif kind in _CLOSING:
            nesting -= 1
    return parse(Source(query), no_location=False, max_tokens=MAX_TOKENS)


@dataclass(frozen=True)
class _Pending:
    """A selection set still to walk: at what depth, under introspection or not."""

    selections: SelectionSetNode
    depth: int
    introspection: bool
    fragments: frozenset[str]
    """The fragments spread on the way here: spreading one again is a cycle."""


class LimitsRule(ValidationRule):
    """Refuses an operation nested deeper than :data:`MAX_DEPTH`, or asking too much.

    The walk is a loop over a list (no recursion), follows fragment spreads as
    execution would (each spread counted again), and stops at the first limit
    passed: a fragment bomb costs at most :data:`MAX_SELECTIONS` steps. A cycle
    of fragments is left to graphql-core's own rule, which names it.
    """

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.visited = 0

    def enter_operation_definition(self, node: OperationDefinitionNode, *_args: Any) -> Any:
        """Walk the operation's selections, reporting the first limit passed."""
        problem = self._walk(node)
        if problem is not None:
            self.report_error(GraphQLError(problem, node))
        return SKIP

    def _walk(self, node: OperationDefinitionNode) -> str | None:
        pending = [_Pending(node.selection_set, 0, False, frozenset())]
        top = 0
        while pending:
            item = pending.pop()
            for selection in item.selections.selections:
                self.visited += 1
                if self.visited > MAX_SELECTIONS:
                    return (
                        f"the query selects over {MAX_SELECTIONS} fields "
                        "(fragments count each time they are spread)"
                    )
                if isinstance(selection, FieldNode):
                    depth = item.depth + 1
                    introspection = item.introspection or selection.name.value in _INTROSPECTION
                    if depth == 1:
                        top += 1
                        if top > MAX_TOP_FIELDS:
                            return f"an operation has at most {MAX_TOP_FIELDS} top-level fields"
                    most = MAX_INTROSPECTION_DEPTH if introspection else MAX_DEPTH
                    if depth > most:
                        return f"the query is nested over {most} fields deep"
                    if selection.selection_set is not None:
                        pending.append(
                            _Pending(selection.selection_set, depth, introspection, item.fragments)
                        )
                elif isinstance(selection, InlineFragmentNode):
                    pending.append(
                        _Pending(
                            selection.selection_set, item.depth, item.introspection, item.fragments
                        )
                    )
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    fragment = self.context.get_fragment(name)
                    if fragment is None or name in item.fragments:
                        continue  # unknown or cyclic: graphql-core's own rules say so
                    pending.append(
                        _Pending(
                            fragment.selection_set,
                            item.depth,
                            item.introspection,
                            item.fragments | {name},
                        )
                    )
        return None


def checked_limit(limit: int) -> int:
    """``limit`` if it is a page size this API answers.

    Raises:
        GraphQLError: below 1 or over :data:`MAX_LIMIT` (10⁶ rows are refused, never read).
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise GraphQLError(
            f"limit is between 1 and {MAX_LIMIT}, not {limit}; ask for the next page with cursor"
        )
    return limit

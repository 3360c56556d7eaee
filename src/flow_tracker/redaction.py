r"""Make any value safe to store: redact secrets, keep JSON valid, bound the size.

Runs in the background writer, never in the job's thread. The rules:

* keys that look sensitive (password, token, api_key, cookie, …, matched
  case-insensitively on the key with ``_``/``-``/spaces removed, at any depth;
  short words such as ``pw``, ``pass``, ``jwt``, ``bearer`` and ``dsn`` only as a
  whole word of the key, and any ``*_key`` such as ``stripe_key``) have their
  values replaced by ``"[REDACTED]"``;
* secrets inside any string - data values, log messages, error messages and
  tracebacks - are cut out by value: a URL's password (``postgresql://app:pw@db``
  keeps ``app`` and the host), a ``Bearer <token>``, a PEM private key, tokens
  known by their prefix whatever their key (GitHub ``ghp_…``/``github_pat_…``,
  Slack ``xoxb-…``, Stripe ``sk_live_…``, AWS key ids ``AKIA…``/``ASIA…``, JSON
  Web Tokens), and ``password=...``-style pairs (``secret: ...``,
  ``DB_PASSWORD=...``, ``"access_token": "..."``, ``?client_secret=...&``): a
  key that ends with ``password``, ``passwd``, ``passphrase``, ``secret``,
  ``token``, ``authorization`` or ``api_key``/``access_key``/``secret_key``/…,
  or whose last word is ``pw``, ``pwd``, ``pass``, ``auth``, ``session``,
  ``session_id``, ``cookie``, ``jwt``, ``dsn`` or ``signature`` (so
  ``prompt_tokens=``, ``token_count=``, ``passenger=`` and ``author=`` stay);
* values JSON cannot hold become their ``repr`` (bytes, objects, sets become lists,
  NaN/Infinity become strings); dict keys become strings;
* NUL characters become the visible text ``\\u0000`` and lone surrogates their
  ``\\udXXX`` escape, because PostgreSQL's text and JSONB reject both;
* long strings are cut with a ``…[truncated N chars]`` marker, nesting deeper
  than :data:`MAX_DEPTH` and containers longer than :data:`MAX_ITEMS` are cut
  with a marker, and whole documents over the size limit become a preview.
"""

from __future__ import annotations

import json
import json.encoder
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

REDACTED = "[REDACTED]"
MAX_DEPTH = 32
MAX_ITEMS = 1_000
MAX_STRING = 8_192
MAX_REPR = 1_024
MAX_KEY = 256

SENSITIVE_KEY_FRAGMENTS: tuple[str, ...] = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "accesskey",
    "privatekey",
    "authorization",
    "cookie",
    "session",
    "creditcard",
    "cardnumber",
    "cvv",
    "cvc",
    "ssn",
    "iban",
    "signature",
    "credentials",
    "pwd",
    "databaseurl",
    "connectionstring",
)
# Too short to look for inside a key ("pass" is in "passenger", "pw" in "upward"):
# sensitive only as a whole word of the key ("pw", "db_pass", "jwtToken", "dsn").
SENSITIVE_KEY_WORDS = frozenset({"pw", "pass", "jwt", "bearer", "dsn", "otp"})
# "auth" (auth_header, oauth, x-auth) is sensitive, but "author" and "authored_at" are not.
_AUTH_PATTERN = r"auth(?!or)"
_KEY_NORMALISE = re.compile(r"[\s_\-.]")
_KEY_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")

# Secrets by value, in any string. Each keeps what tells the reader what it was.
# All match ASCII only ("(?a)"): the quick test of each rule looks for ASCII text,
# and Unicode case folding would also take U+017F (long s) for "s".
_URL_PASSWORD = re.compile(r"(?ai)\b([a-z][a-z0-9+.\-]*://[^\s:/@?#]*):([^\s/@?#]+)@")
_BEARER = re.compile(r"(?ai)\b(bearer|token|basic)(\s+)[a-z0-9\-._~+/]{8,}=*")
# A PEM private key from its BEGIN line to its END line, or to the end of a text
# cut inside it.
_PRIVATE_KEY_BLOCK = re.compile(
    r"(?as)(-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----).*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)"
)
# A pair's key is sensitive when it ends with one of these, whatever comes before:
# no common word ends with them ("DB_PASSWORD", "accessToken", "csrftoken",
# "AWS_SECRET_ACCESS_KEY"). A key that goes on ("tokens", "token_count",
# "password_file") is not: those name counters and paths.
_PAIR_KEY_ENDINGS = (
    r"pass(?:word|wd|phrase)|secret|token|authorization|"
    r"(?:api|access|secret|private|signing|encryption|master)[_\-. ]?key"
)
# Short or common words count only as the last whole word of the key: after its
# start, "_", "-", "." or a change from lower to upper case ("db_pass", "X-Auth",
# "userPwd", "SENTRY_DSN"; not "bypass", "compass", "possession", "author").
_PAIR_KEY_WORDS = r"pwd|pw|pass|auth|session(?:[_\-.]?id)?|cookie|jwt|dsn|signature"
_WORD_START = r"(?:(?<![a-z0-9])|(?-i:(?<=[a-z0-9])(?=[A-Z])))"
_PAIR = re.compile(
    # The lookahead holds the first letter of every key word above: most places of
    # a text fail on it at once, not on each alternative in turn (a third faster).
    rf"(?ai)(?=[acdejmpst])((?:{_PAIR_KEY_ENDINGS}|{_WORD_START}(?:{_PAIR_KEY_WORDS}))"
    rf"(?:\\?[\"'])?\s*[=:]\s*)"
    # Already cut by the rules before this one, which keep more of the value.
    rf"(?!\[REDACTED\]|bearer\b|basic\b|token\b|-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\[)"
    # The value: quoted (also JSON inside a JSON string, \"...\"), to its closing
    # quote or the end of a text cut inside it; else up to a space or separator.
    rf"(\\\"[^\"]*(?:\\\"|\Z)|\"(?:[^\"\\]|\\.)*(?:\"|\Z)|'[^']*(?:'|\Z)|[^\s&,;\"')\]}}]+)"
)
# Tokens that say what they are by their prefix, under any key or none: GitHub,
# Slack, Stripe, AWS access key ids, flow-tracker's own API tokens, and JSON Web
# Tokens (two base64url JSON objects and a signature; "eyJ" is '{"'). The prefix
# is kept, a JWT cut whole.
_KNOWN_TOKEN = re.compile(
    r"(?a)(?<![\w-])(?:"
    r"(gh[pousr]_|github_pat_)\w{20,}"
    r"|(xox[abprs]-)[\w-]{10,}"
    r"|([rs]k_(?:live|test)_)[A-Za-z0-9]{10,}"
    r"|(A[KS]IA)[A-Z0-9]{16}(?![A-Za-z0-9])"
    r"|(ft_)[a-z0-9]{12}_[\w-]{20,}"
    r"|eyJ[\w-]+\.eyJ[\w-]+\.[\w-]*"
    r")"
)


def _redact_pair(match: re.Match[str]) -> str:
    secret = match.group(2)
    quote = next((q for q in ('\\"', '"', "'") if secret.startswith(q)), "")
    closed = len(secret) >= 2 * len(quote) and secret.endswith(quote)
    return f"{match.group(1)}{quote}{REDACTED}{quote if closed else ''}"


def _redact_known_token(match: re.Match[str]) -> str:
    prefix = match.group(match.lastindex) if match.lastindex else ""
    return f"{prefix}{REDACTED}"


def _names_a_scheme(value: str) -> bool:
    return _scheme_in(value.lower())


def _scheme_in(lowered: str) -> bool:
    return "bearer" in lowered or "basic" in lowered or "token" in lowered


# Every key _PAIR takes holds one of these: a text with none of them (most
# "key=value" lines: ids, counts, states) skips its scan, the costliest of all.
_PAIR_KEY_STEMS = (
    "pass",
    "pw",
    "secret",
    "token",
    "auth",
    "key",
    "session",
    "cookie",
    "jwt",
    "dsn",
    "signature",
)


def _may_hold_pair(value: str, lowered: str | None = None) -> bool:
    if "=" not in value and ":" not in value:
        return False
    lowered = value.lower() if lowered is None else lowered
    return any(stem in lowered for stem in _PAIR_KEY_STEMS)


def _may_hold_known_token(value: str) -> bool:
    # Each prefix holds one of these ("ghp_", "github_pat_", "sk_live_", "xoxb-",
    # "AKIA", "ft_", "eyJ"); most messages hold none, and these tests cost far less
    # than the pattern.
    return (
        "gh" in value
        or "github" in value
        or "k_" in value
        or "xox" in value
        or "IA" in value
        or "ft_" in value
        or "eyJ" in value
    )


class _Rule(NamedTuple):
    """A secret's pattern, what replaces it, and a quick test it cannot match without."""

    pattern: re.Pattern[str]
    replacement: str | Callable[[re.Match[str]], str]
    may_match: Callable[[str], bool]


# In this order: a pair's value is cut after the rules that keep more of it (a
# URL's user and host, the word Bearer, a key's BEGIN line), and before known
# tokens, whose kept prefix would otherwise become the start of a pair's value.
_RULES = (
    _Rule(_URL_PASSWORD, rf"\1:{REDACTED}@", lambda value: "://" in value),
    _Rule(_BEARER, rf"\1\2{REDACTED}", _names_a_scheme),
    _Rule(_PRIVATE_KEY_BLOCK, rf"\1{REDACTED}\2", lambda value: "PRIVATE KEY-----" in value),
    _Rule(_PAIR, _redact_pair, _may_hold_pair),
    _Rule(_KNOWN_TOKEN, _redact_known_token, _may_hold_known_token),
)


def clean_text(value: str) -> str:
    """Return ``value`` without NUL characters or lone surrogates, nothing else changed."""
    if "\x00" in value:
        value = value.replace("\x00", "\\u0000")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def may_hold_secret(value: str) -> bool:
    """A quick test: False means :func:`redact_text` would leave ``value`` unchanged.

    The quick tests of :data:`_RULES` (the same answer as any of them, pinned by
    the tests), with the text lowered once: it runs for every string of every
    logged dict, on the writer's and the event dispatcher's threads, where five
    calls through a generator cost more than the tests themselves.
    """
    if "://" in value or "PRIVATE KEY-----" in value or _may_hold_known_token(value):
        return True
    lowered = value.lower()
    return _scheme_in(lowered) or _may_hold_pair(value, lowered)


def redact_text(value: str) -> str:
    """Cut secrets out of free text by value (see the module docstring); the rest stays."""
    # Each pattern runs only where its quick test passes: most messages pass none
    # and cost a few substring tests, not a regular expression scan each.
    for rule in _RULES:
        if rule.may_match(value):
            value = rule.pattern.sub(rule.replacement, value)
    return value


def truncate(value: str, limit: int) -> str:
    """Cut ``value`` to at most ``limit`` characters, ending with a marker of how much was cut.

    The marker counts toward ``limit``, so that the result fits a column of that
    size (PostgreSQL refuses a longer value, and with it the whole row).
    """
    if len(value) <= limit:
        return value
    cut = len(value) - limit
    while True:
        marker = f"…[truncated {cut} chars]"
        keep = max(0, limit - len(marker))
        if len(value) - keep == cut or keep == 0:
            break
        cut = len(value) - keep
    return f"{value[:keep]}{marker}"[:limit]


def safe_repr(value: object) -> str:
    """``repr(value)``, bounded, and a placeholder when ``__repr__`` itself fails."""
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not lose the record
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return truncate(clean_text(text), MAX_REPR)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _big_int(value: int) -> str:
    """An integer beyond 64 bits as its decimal digits.

    SQLite's JSON functions turn such numbers into floats (losing digits) and the
    dashboard's JavaScript could not hold them either; the digits as a string are exact.
    """
    try:
        return str(value)
    except ValueError:  # more digits than Python converts by default
        return f"[integer of {value.bit_length()} bits]"


def _no_default(value: object) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")  # never: a plain dict holds none


def _plain_encoder() -> Callable[[Any], str]:
    """JSON of a flat dict of plain values, as ``Redactor._encode`` writes it, at half its cost.

    ``JSONEncoder.encode`` builds a new C encoder for every call, which costs
    more than encoding a log entry's few keys; this one is built once. Without
    the check for circular references: a flat dict of plain values holds none.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    encode = make(
        None, _no_default, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )

    def encode_plain(value: Any) -> str:
        return "".join(encode(value, 0))

    return encode_plain


_encode_plain = _plain_encoder()


class Redactor:
    """Turns values into safe JSON documents under one set of rules.

    Args:
        extra_keys: key fragments to redact besides :data:`SENSITIVE_KEY_FRAGMENTS`.
        max_string: strings longer than this are truncated.
        max_size: a serialised document longer than this is replaced by a preview.
    """

    def __init__(
        self,
        extra_keys: Iterable[str] = (),
        *,
        max_string: int = MAX_STRING,
        max_size: int = 65_536,
    ) -> None:
        fragments = [*SENSITIVE_KEY_FRAGMENTS, *(_normalise_key(k) for k in extra_keys)]
        alternatives = [re.escape(f) for f in fragments if f] + [_AUTH_PATTERN]
        self._pattern = re.compile("|".join(alternatives))
        self._verdicts: dict[str, bool] = {}
        # Keys that passed every test of _is_plain: the same few recur in every entry.
        self._plain_keys: set[str] = set()
        self.max_string = max_string
        self.max_size = max_size
        self._encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def is_sensitive(self, key: str) -> bool:
        """True when values under ``key`` must not be stored."""
        verdict = self._verdicts.get(key)
        if verdict is None:
            norm = _normalise_key(key)
            words = [w.lower() for w in _KEY_WORDS.findall(key)]
            verdict = (
                bool(self._pattern.search(norm))
                or any(w in SENSITIVE_KEY_WORDS for w in words)
                or (len(words) > 1 and words[-1] == "key")  # api_key, stripe_key, signingKey
            )
            if len(self._verdicts) < 10_000:
                self._verdicts[key] = verdict
        return verdict

    def scrub(self, value: Any, depth: int = 0) -> Any:
        """Return a JSON-safe, redacted copy of ``value``."""
        if value is None or value is True or value is False:
            return value
        kind = type(value)
        if kind is str:
            return truncate(clean_text(redact_text(value)), self.max_string)
        if kind is int:
            return value if _INT64_MIN <= value <= _INT64_MAX else _big_int(value)
        if kind is float:
            return value if math.isfinite(value) else str(value)
        if depth >= MAX_DEPTH:
            return "[max depth reached]"
        if isinstance(value, Mapping):
            return self._scrub_mapping(value, depth)
        if isinstance(value, (list, tuple, set, frozenset)):
            return self._scrub_sequence(value, depth)
        if isinstance(value, str):  # str subclasses, e.g. enums of str
            return truncate(clean_text(redact_text(str.__str__(value))), self.max_string)
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return self.scrub(int(value), depth)
        if isinstance(value, float):
            return self.scrub(float(value), depth)
        return safe_repr(value)

    def _scrub_mapping(self, value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        try:
            items = list(value.items())
        except Exception:
            return {"[unreadable mapping]": safe_repr(value)}
        for index, (key, item) in enumerate(items):
            if index >= MAX_ITEMS:
                out["[truncated]"] = f"{len(items) - MAX_ITEMS} more keys"
                break
            name = key if type(key) is str else safe_repr(key)
            # Keys are cut by value too: a dict keyed by connection strings or
            # by "password=..." lines would carry the secret in its keys.
            name = truncate(clean_text(redact_text(name)), MAX_KEY)
            out[name] = REDACTED if self.is_sensitive(name) else self.scrub(item, depth + 1)
        return out

    def _scrub_sequence(self, value: Iterable[Any], depth: int) -> list[Any]:
        items = list(value)
        out = [self.scrub(item, depth + 1) for item in items[:MAX_ITEMS]]
        if len(items) > MAX_ITEMS:
            out.append(f"[truncated {len(items) - MAX_ITEMS} more items]")
        return out

    def to_json(self, value: Any) -> str | None:
        """Scrub ``value`` and serialise it; None stays None (SQL NULL)."""
        if value is None:
            return None
        # Most data is a small flat dict of plain values: encode it as it is.
        text = _encode_plain(value) if self._is_plain(value) else self._encode(self.scrub(value))
        if len(text) > self.max_size:
            preview = truncate(text, min(self.max_size // 2, 4_096))
            text = json.dumps(
                {"_truncated": True, "original_size": len(text), "preview": preview},
                ensure_ascii=False,
            )
        return text

    def redact_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """An event for subscribers with what users put in it redacted as when stored.

        Only the fields that carry user values are looked at - ``data``,
        ``metadata``, messages, reasons and errors; ids, names and times are
        flow-tracker's own. A flat dict with nothing to redact and a message with
        nothing secret-looking cost a quick check, not a copy: the dispatcher runs
        this for every event, beside the job's threads.
        """
        out = event
        for key in ("data", "metadata"):
            value = event.get(key)
            if value and not self._is_plain(value):
                out = out if out is not event else dict(event)
                out[key] = self.scrub(value)
        for key in ("message", "reason", "skip_reason"):
            value = event.get(key)
            if isinstance(value, str) and may_hold_secret(value):
                out = out if out is not event else dict(event)
                out[key] = redact_text(value)
        error = event.get("error")
        if isinstance(error, dict):
            cleaned = {
                k: redact_text(v) if isinstance(v, str) and k != "class" else v
                for k, v in error.items()
            }
            if cleaned != error:
                out = out if out is not event else dict(event)
                out["error"] = cleaned
        return out

    def _is_plain(self, value: Any) -> bool:
        """True for a flat dict that scrubbing would leave exactly as it is."""
        if type(value) is not dict or len(value) > 64:
            return False
        sensitive = self.is_sensitive
        limit = self.max_string
        plain_keys = self._plain_keys
        for key, item in value.items():
            if type(key) is not str or key not in plain_keys:
                if (
                    type(key) is not str
                    or len(key) > MAX_KEY
                    or not key.isascii()
                    or "\x00" in key
                    or sensitive(key)
                    or may_hold_secret(key)
                ):
                    return False
                if len(plain_keys) < 10_000:
                    plain_keys.add(key)
            kind = type(item)
            if kind is str:
                if (
                    len(item) > limit
                    or not item.isascii()
                    or "\x00" in item
                    or may_hold_secret(item)
                ):
                    return False
            elif kind is float:
                if not math.isfinite(item):
                    return False
            elif kind is int:
                if not _INT64_MIN <= item <= _INT64_MAX:
                    return False
            elif not (kind is bool or item is None):
                return False
        return True

    def text(self, value: object, limit: int) -> str:
        """Return ``value`` as safe, bounded, redacted text (``str()`` of non-strings)."""
        if type(value) is not str:
            try:
                value = str(value)
            except Exception:
                value = safe_repr(value)
        # Cleaned before it is cut: an escaped NUL or surrogate is longer than the
        # character it stands for, and the result must fit a column of ``limit``.
        return truncate(clean_text(redact_text(value)), limit)


def _normalise_key(key: str) -> str:
    return _KEY_NORMALISE.sub("", key.lower())

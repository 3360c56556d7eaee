r"""Make any value safe to store: redact secrets, keep JSON valid, bound the size.

Runs in the background writer, never in the job's thread. The rules:

* keys that look sensitive (password, token, api_key, cookie, …, matched
  case-insensitively on the key with ``_``/``-``/spaces removed, at any depth;
  short words such as ``pw``, ``pass``, ``jwt``, ``bearer`` and ``dsn`` only as a
  whole word of the key, and any ``*_key`` such as ``stripe_key``) have their
  values replaced by ``"[REDACTED]"``;
* secrets inside any string - data values, log messages, error messages and
  tracebacks - are cut out by value: a URL's password (``postgresql://app:pw@db``
  keeps ``app`` and the host), a ``Bearer <token>``, and ``password=...``-style
  pairs (``secret: ...``, ``api_key=...``, also JSON-quoted);
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
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[REDACTED]"
MAX_DEPTH = 32
MAX_ITEMS = 1_000
MAX_STRING = 8_192
MAX_REPR = 1_024

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
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@?#]*):([^\s/@?#]+)@")
_BEARER = re.compile(r"(?i)\b(bearer|token|basic)(\s+)[a-z0-9\-._~+/]{8,}=*")
_PAIR_KEYS = (
    r"pass(?:word|wd|phrase)?|pwd|pw|secret|token|api[_\-]?key|access[_\-]?key|"
    r"secret[_\-]?key|private[_\-]?key|client[_\-]?secret|auth(?:orization)?|"
    r"session(?:[_\-]?id)?|cookie|jwt|dsn"
)
_PAIR = re.compile(
    rf"(?i)(\b(?:{_PAIR_KEYS})[\"']?\s*[=:]\s*)"
    rf"(?!\[REDACTED\]|bearer\b|basic\b|token\b)"  # already cut by the rules above
    rf"(\"[^\"]*\"|'[^']*'|[^\s&,;\"')\]}}]+)"
)
_MAY_HOLD_SECRET = re.compile(r"(?i)://|bearer|basic |token|[=:]")


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
    """A quick test: False means :func:`redact_text` would leave ``value`` unchanged."""
    return _MAY_HOLD_SECRET.search(value) is not None


def redact_text(value: str) -> str:
    """Cut secrets out of free text by value (see the module docstring); the rest stays."""
    if not _MAY_HOLD_SECRET.search(value):
        return value
    value = _URL_PASSWORD.sub(rf"\1:{REDACTED}@", value)
    value = _BEARER.sub(rf"\1\2{REDACTED}", value)
    return _PAIR.sub(_redact_pair, value)


def _redact_pair(match: re.Match[str]) -> str:
    secret = match.group(2)
    quote = secret[0] if secret[:1] in ("'", '"') else ""
    return f"{match.group(1)}{quote}{REDACTED}{quote}"


def truncate(value: str, limit: int) -> str:
    """Cut ``value`` to ``limit`` characters plus a marker saying how much was cut."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}…[truncated {len(value) - limit} chars]"


def safe_repr(value: object) -> str:
    """``repr(value)``, bounded, and a placeholder when ``__repr__`` itself fails."""
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not lose the record
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return clean_text(truncate(text, MAX_REPR))


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
            return clean_text(truncate(redact_text(value), self.max_string))
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
            return clean_text(truncate(redact_text(str.__str__(value)), self.max_string))
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
            name = clean_text(truncate(name, 256))
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
        text = self._encode(value if self._is_plain(value) else self.scrub(value))
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
        for key, item in value.items():
            if type(key) is not str or not key.isascii() or "\x00" in key or sensitive(key):
                return False
            kind = type(item)
            if kind is str:
                if (
                    len(item) > limit
                    or not item.isascii()
                    or "\x00" in item
                    or _MAY_HOLD_SECRET.search(item)
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
        return clean_text(truncate(redact_text(value), limit))


def _normalise_key(key: str) -> str:
    return _KEY_NORMALISE.sub("", key.lower())

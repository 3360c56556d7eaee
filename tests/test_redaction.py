"""Bad input is stored safely: secrets redacted, odd values made JSON, sizes bounded.

Property-based: any value hypothesis can think of goes through the scrubber and
through the real databases without raising into user code.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flow_tracker
from flow_tracker.redaction import MAX_DEPTH, REDACTED, Redactor, clean_text, redact_text

redactor = Redactor(extra_keys=["pin"])
default_redactor = Redactor()  # what the writer uses with default settings


def test_sensitive_keys_are_redacted_at_any_depth_and_any_case() -> None:
    value = {
        "user": {"Password": "hunter2", "profile": {"API_KEY": "k", "name": "Ann"}},
        "headers": [{"Authorization": "Bearer x", "Cookie": "c", "X-Request-Id": "r"}],
        "card": {"credit_card_number": "4111", "cvv": "123"},
        "session_token": "t",
        "pin": "0000",
        "author": "Ann",
    }
    out = redactor.scrub(value)
    assert out["user"]["Password"] == REDACTED
    assert out["user"]["profile"] == {"API_KEY": REDACTED, "name": "Ann"}
    assert out["headers"][0] == {"Authorization": REDACTED, "Cookie": REDACTED, "X-Request-Id": "r"}
    assert out["card"] == {"credit_card_number": REDACTED, "cvv": REDACTED}
    assert out["session_token"] == REDACTED and out["pin"] == REDACTED
    assert out["author"] == "Ann"


def test_non_json_values_become_their_repr() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<Thing 1>"

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    out = redactor.scrub(
        {"b": b"\x00\xff", "s": {3, 1}, "t": (1, 2), "o": Thing(), "x": Broken(), 7: "int key"}
    )
    assert out["b"] == "b'\\x00\\xff'"
    assert sorted(out["s"]) == [1, 3] and out["t"] == [1, 2]
    assert out["o"] == "<Thing 1>"
    assert out["x"].startswith("<unrepresentable Broken")
    assert out["7"] == "int key"
    assert redactor.scrub(math.nan) == "nan" and redactor.scrub(-math.inf) == "-inf"


def test_nul_bytes_and_lone_surrogates_become_visible_escapes() -> None:
    assert clean_text("a\x00b") == "a\\u0000b"
    assert clean_text("x\ud800y") == "x\\ud800y"
    assert clean_text("déjà vu ✓") == "déjà vu ✓"


def test_cycles_and_deep_nesting_are_cut_with_a_marker() -> None:
    loop: list[Any] = []
    loop.append(loop)
    out = redactor.scrub(loop)
    depth = 0
    while isinstance(out, list):
        out = out[0]
        depth += 1
    assert out == "[max depth reached]" and depth == MAX_DEPTH


def test_huge_strings_containers_and_documents_are_truncated_with_markers() -> None:
    text = redactor.scrub("x" * 100_000)
    assert text.endswith("…[truncated 91832 chars]") and len(text) == 8192  # marker included
    many = redactor.scrub(list(range(5000)))
    assert len(many) == 1001 and many[-1] == "[truncated 4000 more items]"
    small = Redactor(max_size=1000)
    doc = json.loads(small.to_json({f"k{i}": "v" * 50 for i in range(100)}) or "null")
    assert doc["_truncated"] is True and doc["original_size"] > 1000


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.integers(), children, max_size=5)
        | st.tuples(children, children)
    ),
    max_leaves=30,
)


@given(json_like)
def test_any_value_scrubs_to_valid_json_without_nul_or_surrogates(value: Any) -> None:
    text = redactor.to_json(value)
    if value is None:
        assert text is None
        return
    assert text is not None
    json.loads(text)
    assert "\x00" not in text
    text.encode("utf-8")  # no lone surrogates


flat_plain = st.dictionaries(
    st.text(max_size=12),
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    max_size=8,
)


@given(flat_plain)
def test_a_flat_dict_is_written_as_the_general_encoder_writes_its_scrubbed_form(
    value: dict[str, Any],
) -> None:
    # Flat dicts of plain values take a faster encoder: the text must not differ.
    general = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    assert redactor.to_json(value) == general(redactor.scrub(value))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(message=st.text() | st.integers() | st.binary(max_size=10), data=json_like, meta=json_like)
def test_any_message_data_or_metadata_is_stored_and_never_raises(
    tracked: str, message: Any, data: Any, meta: Any
) -> None:
    metadata = meta if isinstance(meta, dict) else {"value": meta}
    with flow_tracker.track("hostile", metadata=metadata) as tracker:
        with tracker.flow(str(message)[:50] or "f") as flow:
            flow.log(message, data=data)
    record = flow_tracker.get_process(tracker.process_id)
    assert record is not None
    assert record.status is flow_tracker.Status.COMPLETED
    entry = record.flows[0].logs[0]
    assert entry.message == clean_text(redact_text(str(message)))
    assert same_json(entry.data, default_redactor.scrub(data))


def same_json(stored: Any, expected: Any) -> bool:
    """Equal as JSON documents.

    PostgreSQL's JSONB keeps numbers as decimals: a float may come back as an int.
    """
    if isinstance(expected, float) and isinstance(stored, (int, float)):
        return math.isclose(stored, expected, rel_tol=1e-15)
    if isinstance(expected, dict) and isinstance(stored, dict):
        return stored.keys() == expected.keys() and all(
            same_json(stored[k], expected[k]) for k in expected
        )
    if isinstance(expected, list) and isinstance(stored, list):
        return len(stored) == len(expected) and all(map(same_json, stored, expected))
    return bool(stored == expected) and type(stored) is type(expected)


def test_integers_beyond_64_bits_are_kept_as_their_digits() -> None:
    value = {"small": 2**63 - 1, "big": 2**63, "negative": -(2**70), "huge": 10**5000}
    stored = json.loads(redactor.to_json(value) or "null")
    assert stored["small"] == 2**63 - 1
    assert stored["big"] == str(2**63)
    assert stored["negative"] == str(-(2**70))
    assert stored["huge"] == "[integer of 16610 bits]"


def test_short_secret_words_and_key_suffixes_are_redacted_as_whole_words_only() -> None:
    out = default_redactor.scrub(
        {
            "pw": "a",
            "db_pass": "b",
            "jwtToken": "c",
            "bearer": "d",
            "dsn": "e",
            "DATABASE_URL": "f",
            "stripe_key": "g",
            "signingKey": "h",
            "passenger": "Ann",
            "upward": 1,
            "keyboard": "qwerty",
            "monkey": "George",
        }
    )
    redacted = {k for k, v in out.items() if v == REDACTED}
    assert redacted == {
        "pw",
        "db_pass",
        "jwtToken",
        "bearer",
        "dsn",
        "DATABASE_URL",
        "stripe_key",
        "signingKey",
    }


def test_secrets_inside_strings_are_cut_out_by_value() -> None:
    out = default_redactor.scrub(
        {
            "url": "postgresql://app:s3cret@db.internal:5432/app",
            "header": "Bearer eyJhbGciOiJIUzI1NiJ9.payload.signature",
            "line": "login password=hunter2 user=bob",
            "json": '{"api_key": "AKIA0000", "region": "eu"}',
            "plain": "nothing to hide at 12:30",
        }
    )
    assert out["url"] == f"postgresql://app:{REDACTED}@db.internal:5432/app"
    assert out["header"] == f"Bearer {REDACTED}"
    assert out["line"] == f"login password={REDACTED} user=bob"
    assert out["json"] == f'{{"api_key": "{REDACTED}", "region": "eu"}}'
    assert out["plain"] == "nothing to hide at 12:30"
    message = default_redactor.text("could not connect to redis://:pw9@cache:6379/0", 1000)
    assert message == f"could not connect to redis://:{REDACTED}@cache:6379/0"


def test_messages_and_errors_are_stored_without_their_secrets(tracked: str) -> None:
    try:
        with flow_tracker.track("connect") as tracker:
            tracker.info("using postgresql://app:s3cret@db/app")
            raise ConnectionError("auth failed for password=hunter2")
    except ConnectionError:
        pass
    record = flow_tracker.get_process(tracker.process_id)
    assert record is not None and record.error is not None
    assert record.logs[0].message == f"using postgresql://app:{REDACTED}@db/app"
    assert record.error.message == f"auth failed for password={REDACTED}"
    assert "hunter2" not in (record.error.traceback or "")

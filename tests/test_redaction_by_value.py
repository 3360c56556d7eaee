"""Secrets inside strings are cut out by value; counters and ordinary words stay.

Key=value pairs under any spelling of the key, tokens known by their prefix and
PEM private keys are redacted wherever they appear.

The quick tests that let most messages skip the patterns are checked against the
patterns themselves: skipping must never keep a secret.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flow_tracker
from flow_tracker.redaction import _RULES, REDACTED, Redactor, may_hold_secret, redact_text

R = REDACTED


def fake(prefix: str, length: int, alphabet: str = "Ab3xY9q") -> str:
    """A token of ``prefix`` and ``length`` characters after it.

    Built when the tests run, so that no secret scanner reading this file takes
    it for a leaked credential.
    """
    return prefix + (alphabet * length)[:length]


def jwt() -> str:
    """A JSON Web Token's shape: base64url header, payload and signature."""
    return ".".join(["eyJhbGciOiJIUzI1NiJ9", "eyJzdWIiOiIxMjM0In0", fake("", 43)])


def pem(kind: str, *, end: bool = True) -> str:
    """A PEM private key block of ``kind`` ("RSA ", "OPENSSH ", ""), its END line optional."""
    block = f"-----BEGIN {kind}PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nq83vEjDf\n"
    return block + (f"-----END {kind}PRIVATE KEY-----" if end else "")


PAIRS = [
    # Environment dumps: the sensitive word ends a longer key.
    ("DB_PASSWORD=hunter2 DB_HOST=db", f"DB_PASSWORD={R} DB_HOST=db"),
    ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG", f"AWS_SECRET_ACCESS_KEY={R}"),
    ("GITHUB_TOKEN=abc CLIENT_SECRET=def", f"GITHUB_TOKEN={R} CLIENT_SECRET={R}"),
    ("SENTRY_DSN=https://k@o1.ingest.sentry.io/1", f"SENTRY_DSN={R}"),
    ("MYSQL_PWD=abc REDIS_PASS=def", f"MYSQL_PWD={R} REDIS_PASS={R}"),
    # OAuth responses, as JSON and as a query string.
    (
        '{"access_token": "a1", "refresh_token": "r1", "id_token": "i1", "token_type": "Bearer"}',
        f'{{"access_token": "{R}", "refresh_token": "{R}", "id_token": "{R}", '
        '"token_type": "Bearer"}',
    ),
    ("GET /callback?access_token=a1&state=xyz", f"GET /callback?access_token={R}&state=xyz"),
    (
        "POST client_id=app&client_secret=s3&grant=x",
        f"POST client_id=app&client_secret={R}&grant=x",
    ),
    # camelCase, dotted and dashed keys, and words of a sentence.
    (
        "dbPassword=x clientSecret: y accessToken=z",
        f"dbPassword={R} clientSecret: {R} accessToken={R}",
    ),
    ("userPwd=x db.pass=y X-Auth: z", f"userPwd={R} db.pass={R} X-Auth: {R}"),
    ("invalid API key: abc123", f"invalid API key: {R}"),
    ("apiKey=a signing_key=b", f"apiKey={R} signing_key={R}"),
    (
        "ENCRYPTION_KEY=a MASTER_KEY=b Private-Key: c",
        f"ENCRYPTION_KEY={R} MASTER_KEY={R} Private-Key: {R}",
    ),
    ("password:\n  hunter2", f"password:\n  {R}"),  # YAML: the value on the next line
    ("csrftoken=abc; sessionid=def", f"csrftoken={R}; sessionid={R}"),
    ("user_session=a session_id=b sessionId=c", f"user_session={R} session_id={R} sessionId={R}"),
    ("Set-Cookie: sid=abc; Path=/", f"Set-Cookie: {R}; Path=/"),
    (
        "s3.get?X-Amz-Signature=abc&X-Amz-Security-Token=def",
        f"s3.get?X-Amz-Signature={R}&X-Amz-Security-Token={R}",
    ),
    ("jwt=abc passphrase: def", f"jwt={R} passphrase: {R}"),
    # Values quoted, JSON inside a JSON string, and a quote the text was cut inside.
    ("password='hunter 2' user=bob", f"password='{R}' user=bob"),
    ('{\\"password\\": \\"hunter2\\"}', f'{{\\"password\\": \\"{R}\\"}}'),
    ('{"token": "a\\"b", "n": 1}', f'{{"token": "{R}", "n": 1}}'),
    ('body {"access_token": "abc', f'body {{"access_token": "{R}'),
]

KEPT = [
    "prompt_tokens=120 completion_tokens=35 total_tokens=155",
    "tokens: 5, token_count=3, token_type=bearer, max_tokens=100",
    "passenger=Ann author=Ann authored_at=2024-05-01",
    "session_count=4 sessions: 2",
    "bypass=true compass=N possession=ball",
    "password_file=/run/secrets/db secret_name=prod/db",
    "cache_key=user:42 partition_key=7 routing_key=orders primary_key=id",
    "keyboard=us monkey=George",
    "Error: connection refused at 12:30:45",
    "order_id=42 status=paid amount=12.50",
    "risk_test_results=3 task_live_updates=on",
    "xoxo-hugs from AKIA and eyJ.eyJ.",
]


@pytest.mark.parametrize(("text", "expected"), PAIRS)
def test_a_key_ending_with_a_sensitive_word_has_its_value_redacted(
    text: str, expected: str
) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize("text", KEPT)
def test_counters_paths_and_words_that_merely_contain_a_sensitive_word_are_kept(
    text: str,
) -> None:
    assert redact_text(text) == text


def known_tokens() -> list[tuple[str, str]]:
    """Each known token and the prefix its redaction keeps."""
    tokens = [(fake(p, 36), p) for p in ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")]
    tokens.append((fake("github_pat_", 82, "Ab3_x9"), "github_pat_"))
    tokens += [(fake(p, 24, "12-ab3"), p) for p in ("xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-")]
    tokens += [(fake(p, 24), p) for p in ("sk_live_", "rk_live_", "sk_test_")]
    tokens += [(fake(p, 16, "Q7ZX4W"), p) for p in ("AKIA", "ASIA")]
    # flow-tracker's own API tokens: ft_<12 lower-case letters or digits>_<secret>.
    tokens.append(("ft_k3v9x2m7q1zd_" + "Xy-9_bQ4" * 5 + "zZ9", "ft_"))
    tokens.append((jwt(), ""))
    return tokens


@pytest.mark.parametrize(("token", "prefix"), known_tokens())
def test_a_token_known_by_its_prefix_is_redacted_under_any_key_or_none(
    token: str, prefix: str
) -> None:
    kept = f"{prefix}{R}"
    assert redact_text(f"cloning with {token} now") == f"cloning with {kept} now"
    assert redact_text(f"export GH={token}") == f"export GH={kept}"
    assert redact_text(json.dumps({"value": token})) == json.dumps({"value": kept})
    # Under a sensitive key the pair rule takes the whole value, prefix and all.
    assert redact_text(f"token={token}") == f"token={R}"


def test_near_misses_of_known_token_prefixes_are_kept() -> None:
    near = [
        fake("AKIA", 15, "Q7ZX4W"),  # an access key id has exactly 16 more characters
        fake("AKIA", 17, "Q7ZX4W"),
        fake("akia", 16, "Q7ZX4W"),
        "ghp_short",
        "sk_live_",
        fake("mask_live_", 24),  # "sk_live_" inside a word
        fake("xghp_", 36),
        "eyJhbGciOiJIUzI1NiJ9 alone",
        "ft_short",
        "left_k3v9x2m7q1zd_" + "Xy-9_bQ4" * 5,  # "ft_" inside a word
        "ft_K3V9X2M7Q1ZD_" + "Xy-9_bQ4" * 5,  # an id is lower case
    ]
    for text in near:
        assert redact_text(text) == text


def test_a_pem_private_key_is_cut_between_its_begin_and_end_lines() -> None:
    assert redact_text(f"key: {pem('RSA ')} done") == (
        f"key: -----BEGIN RSA PRIVATE KEY-----{R}-----END RSA PRIVATE KEY----- done"
    )
    assert redact_text(f"PRIVATE_KEY={pem('')}") == (
        f"PRIVATE_KEY=-----BEGIN PRIVATE KEY-----{R}-----END PRIVATE KEY-----"
    )
    # A text cut inside the key: the rest of the text goes.
    assert redact_text(f"read {pem('OPENSSH ', end=False)}") == (
        f"read -----BEGIN OPENSSH PRIVATE KEY-----{R}"
    )
    public = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    assert redact_text(public) == public


def every_rule(text: str) -> str:
    """``text`` through every pattern, none skipped, checking each quick test on the way."""
    for rule in _RULES:
        if rule.pattern.search(text):
            assert rule.may_match(text), (rule.pattern.pattern[:40], text)
        text = rule.pattern.sub(rule.replacement, text)
    return text


def assert_quick_tests_keep_nothing(text: str) -> None:
    """The invariants of the quick tests, :func:`may_hold_secret` and the fast path."""
    full = every_rule(text)
    assert redact_text(text) == full
    # The fused quick test answers what the rules' own quick tests answer.
    assert may_hold_secret(text) == any(rule.may_match(text) for rule in _RULES)
    if not may_hold_secret(text):
        assert full == text
    assert redact_text(full) == full  # nothing left to cut: redacting twice changes nothing
    # A flat dict of such strings is encoded as it is only when scrubbing would not change it.
    redactor = Redactor()
    assert json.loads(redactor.to_json({"v": text}) or "null") == {"v": redactor.scrub(text)}


CORPUS = (
    [text for text, _ in PAIRS]
    + KEPT
    + [f"x {token} y" for token, _ in known_tokens()]
    + [pem("RSA "), pem("", end=False), "Authorization: Bearer abcdefghijkl", "plain words"]
)


@pytest.mark.parametrize("text", CORPUS)
def test_the_quick_tests_never_skip_a_secret_of_the_corpus(text: str) -> None:
    assert_quick_tests_keep_nothing(text)


# Pieces of keys, separators and values, and look-alikes, including letters that
# Unicode case folding would take for ASCII ones (long s, Kelvin sign, dotted I).
KEY_PIECES = [
    *["DB_", "PASSWORD", "pass", "Pw", "_pwd", "Token", "tokens", "secret", "Auth", "or"],
    *["session", "_id", "cookie", "jwt", "dsn", "signature", "api", "Key", "access"],
    *["api_key", "AccessKey", "x", "-", ".", "_", "\u017f", "\u212a", "\u0130", "\\", '"', "'"],
]
SEPARATORS = ["=", ":", " = ", '": ', '\\": ', " ", "\t", "\n", ": ", "://u:"]
VALUES = [
    *["hunter2", "'x", '"x y"', "abcdefghij", "[REDACTED]", "@h/db", "Bearer ", "basic "],
    *["ghp_", "github_pat_", "xoxb-", "sk_live_", "AKIA", "ASIA", "0123456789ABCDEF"],
    *["eyJhbGciOiJIUzI1NiJ9.", "eyJ", "-----BEGIN ", "RSA PRIVATE KEY-----", "-----END "],
    *["&", ";", "\x00", "\ud800"],
]
pieces = st.sampled_from(KEY_PIECES + SEPARATORS + VALUES) | st.text(max_size=3)
pairs = st.tuples(
    st.lists(st.sampled_from(KEY_PIECES), max_size=4).map("".join),
    st.sampled_from(SEPARATORS),
    st.lists(st.sampled_from(VALUES), max_size=3).map("".join),
).map("".join)
secretish = st.lists(pairs | pieces, max_size=6).map("".join)


@settings(max_examples=500)
@given(secretish | st.text())
def test_the_quick_tests_never_skip_a_secret_of_any_text(text: str) -> None:
    assert_quick_tests_keep_nothing(text)


def test_env_dumps_and_oauth_responses_are_stored_and_sent_without_their_secrets(
    tracked: str,
) -> None:
    github, token = fake("ghp_", 36), jwt()
    seen: list[dict[str, Any]] = []
    flow_tracker.on("*", seen.append)
    env = f"DB_PASSWORD=hunter2 GITHUB_TOKEN={github} LANG=C"
    body = '{"access_token": "at-1234", "refresh_token": "rt-5678", "expires_in": 3600}'
    failure = PermissionError(f"GET /user?access_token=at-1234&x=1 refused {token}")
    try:
        with flow_tracker.track("deploy", metadata={"env": env}) as tracker:
            tracker.info(f"environment {env}", data={"response": body})
            raise failure
    except PermissionError:
        pass
    assert flow_tracker.flush()
    record = flow_tracker.get_process(tracker.process_id)
    assert record is not None and record.error is not None
    assert record.logs[0].message == f"environment DB_PASSWORD={R} GITHUB_TOKEN={R} LANG=C"
    assert record.logs[0].data == {
        "response": f'{{"access_token": "{R}", "refresh_token": "{R}", "expires_in": 3600}}'
    }
    assert record.metadata == {"env": f"DB_PASSWORD={R} GITHUB_TOKEN={R} LANG=C"}
    assert record.error.message == f"GET /user?access_token={R}&x=1 refused {R}"
    everything = repr(record) + repr(seen)
    for secret in ("hunter2", github, "at-1234", "rt-5678", token):
        assert secret not in everything

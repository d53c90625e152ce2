"""Keeping secrets out of what prefgame stores and prints.

Two kinds of secret reach prefgame: an API key (a judge's, given as a secret config field or taken
from the environment) and credentials written into a URL (``https://user:password@host/v1``).
:func:`redact_secret` removes a key from a text — also a part of it that an endpoint echoes back,
any run of :data:`MIN_ECHO` or more of its characters —, :func:`redact_urls` removes the
``user:password@`` part of every URL in a text, and :func:`redact_value` applies the URL rule to
every string of a config value and hides the values of free-form mappings whose key names a secret
(``api_key``, ``hf_token``, ``password`` ...). What is removed is replaced by :data:`REDACTED`.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"
MIN_ECHO = 8  # a run of this many characters of a key is treated as the key
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/@]+@")
_SECRET_KEY = re.compile(r"(^|[_-])(api[_-]?key|token|password|passwd|secret|credentials?)$", re.IGNORECASE)


def redact_urls(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced: ``https://<redacted>@host/v1``."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)


def url_for_display(url: str) -> str:
    """A URL as messages show it: without its credentials, if it carries any."""
    return _URL_CREDENTIALS.sub(lambda m: m["scheme"], url)


def redact_secret(text: str, secret: str) -> str:
    """``text`` without ``secret`` and without any run of :data:`MIN_ECHO` or more of its characters
    (an endpoint that echoes a key may cut or mask part of it). Secrets shorter than that are removed
    only where they appear whole."""
    if not text or not secret:
        return text
    if len(secret) < MIN_ECHO:
        return text.replace(secret, REDACTED)
    covered = [False] * len(text)
    for i in range(len(secret) - MIN_ECHO + 1):
        piece = secret[i : i + MIN_ECHO]
        at = text.find(piece)
        while at != -1:
            covered[at : at + MIN_ECHO] = [True] * MIN_ECHO
            at = text.find(piece, at + 1)
    if not any(covered):
        return text
    out, i = [], 0
    while i < len(text):
        if covered[i]:
            while i < len(text) and covered[i]:
                i += 1
            out.append(REDACTED)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def redact_value(value: Any, key: str = "") -> Any:
    """A config value as it may be written: URL credentials removed from every string, and the value
    under a mapping key that names a secret (``api_key``, ``access_token``, ...) replaced when it is set."""
    if key and _SECRET_KEY.search(key) and value not in (None, ""):
        return REDACTED
    if isinstance(value, str):
        return redact_urls(value)
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_value(v, str(k)) for k, v in value.items()}
    return value

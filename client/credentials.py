"""The API key the client sends, from the environment or a file, never from the command line.

A command line is visible to every user of the host (``ps``), so the key is
read from ``FACTORIAL_API_KEY`` or from ``--api-key-file PATH``, and sent in
the ``X-API-Key`` header (docs/protocol-notes.md: who a client is).
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlsplit

KEY_VARIABLE = "FACTORIAL_API_KEY"
KEY_HEADER = "X-API-Key"


class KeyFileError(Exception):
    """The key file cannot be read, or holds no key."""


def api_key(key_file: str | None, environ=os.environ) -> str | None:
    """The key: the file's first line when a file is named, else the variable's value; None when neither is set."""
    if key_file:
        try:
            with open(key_file, encoding="utf-8") as file:
                key = file.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"cannot read the API key file {key_file}: {exc.strerror or exc}") from None
        if not key:
            raise KeyFileError(f"the API key file {key_file} is empty")
        return key
    return environ.get(KEY_VARIABLE, "").strip() or None


def key_headers(key: str | None) -> dict[str, str]:
    return {KEY_HEADER: key} if key else {}


def url_carries_key(url: str) -> bool:
    """Whether ``url`` has an ``api_key`` parameter, which ``ps`` shows to everyone."""
    return any(name == "api_key" for name, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True))

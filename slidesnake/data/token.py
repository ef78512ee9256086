"""Access tokens for controlled data: read at request time, never printed.

The config names only WHERE the token lives (a file path or an environment variable), so the
secret never reaches Snakemake's params/metadata, logs, exception text or outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from slidesnake.errors import ConfigError

REDACTED = "<redacted-token>"


class TokenError(ConfigError):
    """The configured token file or environment variable is missing or empty."""


@dataclass(frozen=True)
class Token:
    """A secret whose repr/str never show the value (safe to log by accident)."""

    value: str = field(repr=False)

    def __str__(self) -> str:
        return REDACTED

    def __repr__(self) -> str:
        return f"Token({REDACTED})"

    def scrub(self, text: str) -> str:
        """Return ``text`` with every occurrence of the secret replaced (servers may echo it)."""
        return text.replace(self.value, REDACTED) if self.value else text


def read_token(token_file: str | os.PathLike | None = None, token_env: str | None = None) -> Token | None:
    """Read the token from ``token_file`` or the environment variable ``token_env``; None if neither is set.

    The file wins when both are given, matching gdc-client's ``-t FILE``.
    """
    if token_file:
        path = Path(token_file).expanduser()
        if not path.is_file():
            raise TokenError(
                f"token file {path} does not exist; download a token from the GDC Data Portal "
                "and set gdc.token_file (or --token-file) to its path"
            )
        value = path.read_text().strip()
        if not value:
            raise TokenError(f"token file {path} is empty; save the token downloaded from the GDC Data Portal in it")
        return Token(value)
    if token_env:
        value = os.environ.get(token_env, "").strip()
        if not value:
            raise TokenError(
                f"environment variable {token_env} (gdc.token_env) is unset or empty; export the GDC token in it"
            )
        return Token(value)
    return None


def scrub(text: str, token: Token | None) -> str:
    """Remove ``token`` from ``text`` when a token is in use."""
    return token.scrub(text) if token is not None else text

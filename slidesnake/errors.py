"""One exception base for the whole package, so callers (the CLI, a notebook) can tell slidesnake's own
errors, whose messages name the file, the key and the fix, from bugs.

Two branches say what went wrong and how the CLI exits: :class:`InputError` (bad input or config, exit
code 2) and :class:`ComputationError` (valid input, a failed computation or transfer, exit code 1). The
specific classes live next to the code that raises them and derive from one of these two.
"""

from __future__ import annotations


class SlidesnakeError(Exception):
    """Base of every error slidesnake raises on purpose; ``exit_code`` is what the CLI returns."""

    exit_code: int = 1


class InputError(SlidesnakeError, ValueError):
    """A file, sheet or config value is missing or malformed; the message names it and the fix (exit 2)."""

    exit_code = 2


class ConfigError(InputError):
    """A config key with a wrong name, type or value; the message names the key path."""


class ComputationError(SlidesnakeError, RuntimeError):
    """Valid input, but a computation, download or device failed (exit 1)."""

    exit_code = 1

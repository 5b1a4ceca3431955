"""User-facing errors and the command-line wrapper that turns them into one-line messages."""
from __future__ import annotations

import contextlib
import sys
import traceback
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence


class UserError(Exception):
    """A mistake the user can fix (config, path, checkpoint). Printed as one line, exit code 2."""


class ConfigError(UserError):
    """A problem with a config file or a ``--set`` override."""


def check_new_name(registry: Mapping[str, Any], name: str, entry: Any, what: str) -> None:
    """The rule of every registry (models, methods, pseudo-OOD kinds): a name is held by one entry.

    Registering the same entry again does nothing; another entry under a taken name is a ValueError.
    """
    if name in registry and registry[name] is not entry:
        raise ValueError(f"{what} name '{name}' is registered already; register yours under another name")


@contextlib.contextmanager
def reported(*error_types: type[Exception]) -> Iterator[None]:
    """Inside a command: re-raise the library's ``error_types`` as :class:`UserError` (one line, exit 2).

    The library raises ordinary exceptions; the command line decides which of them are the user's to fix.
    """
    try:
        yield
    except error_types as err:
        raise UserError(str(err)) from None


def run_cli(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; print a :class:`UserError` as one line on stderr and return 2.

    ``--debug`` anywhere in argv re-raises instead, so the traceback is shown.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    shown = warnings.showwarning
    if not debug:  # warnings become one line each, like errors; --debug keeps where they came from
        warnings.showwarning = _one_line_warning
    try:
        return int(main(argv) or 0)
    except UserError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=file or sys.stderr)

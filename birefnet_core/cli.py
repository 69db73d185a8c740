"""How every command line of the core ends: one line on stderr and an exit status.

:func:`run_command` runs a command's function and turns what it raises into the documented
ending: status 0 (done), 1 with ``error: <one line>`` (anything that went wrong, naming the file
and what to do), 130 with ``interrupted...`` (Ctrl-C). A failure we did not foresee still ends in
one line, marked as a bug to report; ``BIREFNET_DEBUG=1`` shows its traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

# what users cause and can fix: bad files, names, folders, values, missing dependencies
EXPECTED = (ValueError, OSError, RuntimeError, ImportError, LookupError, EOFError, MemoryError)


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    return text.splitlines()[0] if text else type(exc).__name__


def setup_logging(level: int = logging.WARNING) -> None:
    """Warnings (and ``level``) as plain lines on stderr, as the commands print their errors."""
    logging.basicConfig(level=level, format="%(message)s")


def run_command(command: Callable[[], int]) -> int:
    """``command()``'s exit status, with any exception turned into one line on stderr."""
    try:
        return command()
    except KeyboardInterrupt as exc:
        detail = one_line(exc) if str(exc).strip() else ""
        print(f"\ninterrupted{': ' + detail if detail else ''}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place where every failure becomes a line
        if os.environ.get("BIREFNET_DEBUG"):
            raise
        if isinstance(exc, EXPECTED):
            print(f"error: {one_line(exc)}", file=sys.stderr)
        else:
            print(f"error: unexpected {type(exc).__name__}: {one_line(exc)} (a bug: please report it; "
                  "BIREFNET_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1

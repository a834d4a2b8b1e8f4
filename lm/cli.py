"""What the entry points share: one-line errors for mistakes a user can fix."""

from __future__ import annotations

import functools
import os
import sys

from lm.errors import UserError


def _user_error(exc: BaseException) -> UserError | None:
    # hydra.utils.instantiate wraps what a constructor raised; look through the chain.
    while exc is not None:
        if isinstance(exc, UserError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def report_user_errors(main):
    """Turn a ``UserError`` anywhere below ``main`` into ``error: <message>`` and exit status 2.

    HYDRA_FULL_ERROR=1 keeps the full traceback for debugging.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception as exc:
            err = _user_error(exc)
            if err is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper

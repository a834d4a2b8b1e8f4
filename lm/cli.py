"""What the entry points share: one-line errors for mistakes a user can fix."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

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


def checkpoint_tool_parser(doc: str) -> argparse.ArgumentParser:
    """The parser of the tools that read one checkpoint (predict, neighbors, calibration), with ``--ckpt``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a .ckpt file written by train.py (or ckpt_path=PATH)")
    return parser


def parse_tool_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse a checkpoint tool's arguments, taking the checkpoint as evaluate.py does too: ``ckpt_path=PATH``."""
    argv = sys.argv[1:] if argv is None else argv
    return parser.parse_args([f"--ckpt={a.removeprefix('ckpt_path=')}" if a.startswith("ckpt_path=") else a
                              for a in argv])


def temperatures(text: str) -> list[float]:
    """An argparse type: comma-separated temperatures, each > 0, such as ``1,2,5``."""
    try:
        taus = [float(t) for t in text.split(",")]
    except ValueError:
        taus = []
    if not taus or min(taus) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give temperatures > 0, comma-separated, such as 1,2,5")
    return taus


def seeds(text: str) -> list[int]:
    """An argparse type: comma-separated integer seeds, such as ``1234,2``."""
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give integer seeds, comma-separated, such as 1234,2") from None


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot be created or written, or None. Creates nothing."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


class CheckOutputDir(Callback):
    """A Hydra callback: refuse an output folder that cannot be written before any work starts."""

    def _check(self, folder: str, key: str) -> None:
        why = _unwritable(Path(folder))
        if why is not None:
            print(f"error: cannot write the output folder {folder} ({why}). Set {key} to a writable folder.",
                  file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

"""Command-line plumbing shared by the entry points: one-line errors, ``--key=value`` overrides,
safe run names and run directories that never overwrite an earlier run."""
from __future__ import annotations

import ast
import difflib
import inspect
import os
import re
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

EXIT_USAGE = 2


class UserError(ValueError):
    """Bad input (file, argument, configuration): reported as one line with exit status 2."""


@contextmanager
def cli_errors(argv=None):
    """Turn a ``UserError`` into ``error: <message>`` on stderr and exit status 2.

    With ``--debug`` among ``argv`` (default ``sys.argv``) the traceback is shown as well.
    """
    debug = "--debug" in (sys.argv if argv is None else argv)
    try:
        yield
    except UserError as error:
        if debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def parse_value(text: str, default):
    """Parse a command-line value to the type of ``default`` (bool/int/float/str/None/tuple)."""
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, str):
        return text
    if text.lower() == "none":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def keyword_defaults(function) -> dict:
    """The keyword parameters of ``function`` with their defaults."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def parse_overrides(args: list[str], defaults: dict, flags: tuple[str, ...] = ("--debug",)) -> dict:
    """Parse ``--key=value`` arguments against ``defaults`` (key -> default value).

    Unknown keys, missing ``=`` and unparsable values raise ``UserError``; the bare ``flags``
    are skipped. A bare ``--key`` for a boolean means true.
    """
    overrides = {}
    for arg in args:
        if arg in flags:
            continue
        match = re.fullmatch(r"--([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?", arg, re.S)
        if not match:
            raise UserError(f"argument {arg!r}: expected --key=value")
        key, text = match.groups()
        if key not in defaults:
            close = difflib.get_close_matches(key, defaults, n=1)
            hint = f" (did you mean --{close[0]}?)" if close else ""
            raise UserError(f"unknown option --{key}{hint}")
        if text is None:
            if not isinstance(defaults[key], bool):
                raise UserError(f"option --{key} needs a value: --{key}=VALUE")
            text = "true"
        try:
            overrides[key] = parse_value(text, defaults[key])
        except ValueError as error:
            raise UserError(f"option --{key}={text}: {error}") from None
    return overrides


def check_run_name(name: str) -> str:
    """Return ``name`` if it is a safe single path component (letters, digits, ``._-``)."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}", name or "") or ".." in name:
        raise UserError(f"run name {name!r}: use 1-100 letters, digits, '.', '_' or '-', "
                        f"not starting with '.' and without '..' or '/'")
    return name


def make_run_dirs(roots: list[Path], name: str, resume: bool = False) -> list[Path]:
    """Create ``root/name`` under every root; refuse to reuse an existing run unless resuming.

    Raises ``UserError`` if a directory cannot be written or already belongs to a run.
    """
    check_run_name(name)
    dirs = [Path(root) / name for root in roots]
    if not resume:
        taken = [str(d) for d in dirs if d.exists() and any(d.iterdir())]
        if taken:
            raise UserError(f"{taken[0]} already holds an earlier run: choose another name, "
                            f"or pass --resume to continue that run")
    for directory in dirs:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise UserError(f"{directory}: cannot write there ({error.strerror or error})") from None
    return dirs


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename: a kill leaves the old file intact."""
    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

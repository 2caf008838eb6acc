"""Command-line plumbing shared by every entry point: one option style, ``--help``, one-line errors,
safe run names, run directories that never overwrite an earlier run, and atomic writes.

Every command is described by its options (:class:`Option`), read from the source that holds their
defaults, so ``--help`` cannot drift from them:

- :func:`options_from_signature`: the named parameters of a function, each documented by the
  comment that ends its line (``seed: int = 0,  # phantom, split and masks``); :func:`run_command`
  turns a function into a command (positional parameters become arguments, keyword-only ones options);
- :func:`options_from_call`: the keywords of a call written in a file, such as the ``train(...)``
  call at the bottom of train.py, with their trailing comments.

A comment alone on a line opens a section of the help. Options are given as ``--key=value`` or
``--key value``; a bare ``--key`` sets a boolean; ``--help`` lists every option with its default
and allowed values; an unknown option is refused with a suggestion. Bad input of any kind raises
:class:`UserError`, which :func:`cli_errors` reports as one line on stderr with exit status 2.
"""
from __future__ import annotations

import ast
import difflib
import errno
import fcntl
import inspect
import io
import json
import os
import re
import shutil
import stat
import sys
import textwrap
import tokenize
import traceback
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

EXIT_USAGE = 2
REQUIRED = inspect.Parameter.empty  # the default of an option that must be given
NAME_MAX = 255  # bytes of a file or folder name on Linux file systems
PATH_MAX = 4096  # bytes of a whole path on Linux
CONFIG_BYTES = 16 * 2 ** 20  # the largest --config file read (a run's metrics.json takes a few hundred KiB)
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class UserError(ValueError):
    """Bad input (file, argument, configuration): reported as one line with exit status 2."""


def integer_list(text: str, option: str, example: str) -> list[int]:
    """The integers of a comma-separated option value (``--option=12,20,30``), or a :class:`UserError`
    naming ``--option`` and showing ``example``."""
    try:
        return [int(part) for part in str(text).split(",")]
    except ValueError:
        raise UserError(f"--{option}={text}: expected comma-separated integers, e.g. {example}") from None


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


COMMANDS = ("the commands are python train.py, compare.py, reconstruct.py, formats.py convert and phantom.py "
            "(each with --help)")


def not_a_command(module: str, instead: str = COMMANDS) -> None:
    """What a module that is not a command does when run as a script: one line saying what to run
    ``instead``, exit status 2 (never a silent exit 0)."""
    with cli_errors([]):
        raise UserError(f"{module} is a module, not a command: {instead}")


# ----------------------------------------------------------------------------- options
@dataclass(frozen=True)
class Option:
    """One ``--name`` option: its default (``REQUIRED`` if it must be given), the comment that
    documents it, its allowed values, the help section it belongs to, and how its text is read."""
    name: str
    default: Any = REQUIRED
    help: str = ""
    choices: tuple = ()
    section: str = ""
    parse: Callable[[str], Any] | None = None  # text -> value; None: by the default's type

    def value(self, text: str):
        """The value of ``text`` for this option; ``ValueError`` if it cannot be one."""
        if self.parse is not None:
            return self.parse(text)
        return parse_value(text, self.default)


@dataclass(frozen=True)
class Positional:
    """A positional argument: ``count`` is ``"1"`` (exactly one), ``"?"`` (optional, ``default``)
    or ``"+"`` (one or more)."""
    name: str
    help: str = ""
    count: str = "1"
    default: Any = None


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_value(text: str, default):
    """Read ``text`` as the type of ``default`` (bool, int, float or str); a ``None`` default takes
    any text, ``none`` meaning None; other defaults (tuples) are read as Python literals."""
    if isinstance(default, bool):
        return parse_bool(text)
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, str) or default is REQUIRED:
        return text
    if default is None:
        return None if text.lower() == "none" else text
    return ast.literal_eval(text)


def positive(text: str) -> int:
    """An integer >= 1 (the option type of counts and sizes)."""
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return int(text)


def non_negative(text: str) -> int:
    """An integer >= 0 (the option type of counts where 0 means a default)."""
    if not text.isdigit():
        raise ValueError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def annotation_parser(annotation: str, default) -> Callable[[str], Any] | None:
    """The reader of an annotated parameter whose default says nothing of its type
    (``int | None = None``, a required ``int``); None: by the default."""
    if not (default is None or default is REQUIRED):
        return None
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    kinds = [part.strip() for part in text.split("|")]
    base = {"int": int, "float": float, "bool": parse_bool}.get(next((k for k in kinds if k != "None"), ""))
    if base is None:
        return None
    return (lambda text: None if text.lower() == "none" else base(text)) if "None" in kinds else base


def _trailing_comments(source: str) -> tuple[dict[int, str], dict[int, str]]:
    """``(comments ending a line of code, comments alone on their line)``, by line number."""
    trailing, alone = {}, {}
    code_lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            (alone if token.start[0] not in code_lines else trailing)[token.start[0]] = token.string[1:].strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.update(range(token.start[0], token.end[0] + 1))
    return trailing, alone


def _documented(entries: list[tuple[str, int, int, Any]], source: str, choices: dict, parsers: dict,
                annotations: dict) -> list[Option]:
    """Options of ``(name, first line, last line, default)`` entries, documented by the comment
    ending their last line; a comment alone on a line opens a section for what follows."""
    trailing, alone = _trailing_comments(source)
    options, section, previous_end = [], "", 0
    for name, first, last, default in entries:
        headers = [alone[line] for line in range(previous_end + 1, first) if line in alone]
        section = headers[-1] if headers else section
        parse = parsers.get(name) or annotation_parser(annotations.get(name), default)
        options.append(Option(name, default, trailing.get(last, ""), tuple(choices.get(name, ())), section, parse))
        previous_end = last
    return options


def options_from_signature(function, *, choices: dict | None = None, parsers: dict | None = None,
                           exclude=()) -> list[Option]:
    """The named parameters of ``function`` as options (defaults from the signature, ``REQUIRED``
    where there is none; help from each parameter's trailing comment), without ``exclude``."""
    source = textwrap.dedent(inspect.getsource(function))
    node = ast.parse(source).body[0]
    args = [*node.args.args, *node.args.kwonlyargs]
    positional_defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults
    defaults = dict(zip([a.arg for a in args], [*positional_defaults, *node.args.kw_defaults]))
    signature = inspect.signature(function).parameters
    entries = [(a.arg, a.lineno, (defaults[a.arg] or a).end_lineno, signature[a.arg].default)
               for a in args if a.arg not in exclude]
    annotations = {name: p.annotation for name, p in signature.items()}
    return _documented(entries, source, choices or {}, parsers or {}, annotations)


def options_from_call(path: Path, function_name: str, *, choices: dict | None = None,
                      parsers: dict | None = None) -> list[Option]:
    """The keywords of the last ``function_name(...)`` call in the file ``path`` as options: their
    literal values are the defaults and their trailing comments the help; ``parsers``: readers of
    the options whose default does not tell their type (``None``)."""
    source = Path(path).read_text()
    calls = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name) and node.func.id == function_name and node.keywords]
    if not calls:
        raise UserError(f"{path}: no {function_name}(...) call with keywords")
    entries = []
    for keyword in max(calls, key=lambda node: node.lineno).keywords:
        try:
            value = ast.literal_eval(keyword.value)
        except ValueError:
            raise UserError(f"{path}, line {keyword.lineno}: the value of {keyword.arg} must be a literal "
                            f"(a number, a string, True, False or None)") from None
        entries.append((keyword.arg, keyword.lineno, keyword.value.end_lineno, value))
    return _documented(entries, source, choices or {}, parsers or {}, {})


def positionals_of(function) -> list[Positional]:
    """The positional parameters of ``function`` (required, optional with a default, or ``*many``),
    each documented by the comment ending its line."""
    source = textwrap.dedent(inspect.getsource(function))
    node = ast.parse(source).body[0]
    trailing, _ = _trailing_comments(source)
    lines = {a.arg: a.end_lineno for a in [*node.args.args, *filter(None, [node.args.vararg])]}
    found = []
    for p in inspect.signature(function).parameters.values():
        text = trailing.get(lines.get(p.name), "")
        if p.kind == p.VAR_POSITIONAL:
            found.append(Positional(p.name.upper(), text, "+"))
        elif p.kind == p.POSITIONAL_OR_KEYWORD:
            optional = p.default is not p.empty
            found.append(Positional(p.name.upper(), text, "?" if optional else "1", p.default if optional else None))
    return found


# ----------------------------------------------------------------------------- parsing
@dataclass
class Command:
    """What a command takes, for parsing and for ``--help``."""
    prog: str
    description: str
    options: list[Option]
    positionals: list[Positional] = field(default_factory=list)
    config_file: bool = False  # accept --config=FILE: the "config" of a metrics.json as option values
    not_from_config: tuple = ()  # keys of a --config file that are not taken (e.g. resume)

    def usage(self) -> str:
        names = [{"1": p.name, "?": f"[{p.name}]", "+": f"{p.name} [{p.name} ...]"}[p.count] for p in self.positionals]
        required = [f"--{o.name}=VALUE" for o in self.options if o.default is REQUIRED]
        config = ["[--config=FILE]"] if self.config_file else []
        return " ".join(["usage:", self.prog, *names, *required, "[--key=value ...]", *config, "[--debug] [--help]"])

    def help(self) -> str:
        lines = [self.usage(), "", self.description.strip(), ""]
        if self.positionals:
            lines.append("arguments:")
            lines += [_help_line(p.name, p.help, [f"default: {_show(p.default)}"] if p.count == "?" else [])
                      for p in self.positionals]
            lines.append("")
        lines.append("options (--key=value or --key value; a bare --key means true for a boolean):")
        section = ""
        for option in self.options:
            if option.section != section:
                section = option.section
                lines.append(f" {section}:")
            lines.append(_help_line(f"--{option.name}", option.help, _facts(option)))
        lines.append("")
        if self.config_file:
            lines.append(_help_line("--config", "rerun the configuration saved in FILE (output/NAME/metrics.json); "
                                                "options given beside it still win"))
        lines.append(_help_line("--debug", "show the traceback of an error"))
        lines.append(_help_line("--help", "show this help and exit"))
        return "\n".join(lines) + "\n"

    def parse(self, argv: list[str]) -> tuple[list, dict]:
        """``(positional values, option values given)``; ``--help`` prints the help and exits 0."""
        by_name = {option.name: option for option in self.options}
        values, from_file, words = {}, {}, []
        i = 0
        while i < len(argv):
            arg = argv[i]
            if arg in ("--help", "-h"):
                print(self.help(), end="")
                sys.exit(0)
            if arg == "--debug":
                pass
            elif arg.startswith("--"):
                key, has_value, text = arg[2:].partition("=")
                if key == "config" and self.config_file:
                    text, i = (text, i) if has_value else (_next_value(argv, i, key), i + 1)
                    from_file = self.read_config(text)
                else:
                    option = self.option(key, by_name)
                    if not has_value:
                        text = _next_value(argv, i, key, boolean=isinstance(option.default, bool))
                        i += text is not None
                        text = "true" if text is None else text
                    values[key] = self.value(option, text)
            elif arg.startswith("-") and not re.fullmatch(r"-[\d.]+(e-?\d+)?", arg):
                raise UserError(f"unknown option {arg}: options are written --key=value (see --help)")
            else:
                words.append(arg)
            i += 1
        values = {**from_file, **values}
        missing = [f"--{o.name}" for o in self.options if o.default is REQUIRED and o.name not in values]
        if missing:
            raise UserError(f"option {missing[0]} is required ({self.usage()})")
        return self.positional_values(words), values

    def option(self, key: str, by_name: dict) -> Option:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UserError(f"argument --{key}: expected --key=value")
        if key not in by_name:
            known = list(by_name) + (["config"] if self.config_file else [])
            close = difflib.get_close_matches(key, known, n=1)
            raise UserError(f"unknown option --{key}" + (f" (did you mean --{close[0]}?)" if close else "")
                            + f"; {self.prog} --help lists them")
        return by_name[key]

    @staticmethod
    def value(option: Option, text: str):
        try:
            value = option.value(text)
        except (ValueError, SyntaxError) as error:
            raise UserError(f"option --{option.name}={text}: {error}") from None
        if option.choices and value not in option.choices:
            raise UserError(f"--{option.name}={value!r}: choose one of {', '.join(map(str, option.choices))}")
        return value

    def read_config(self, path: str) -> dict:
        """The option values of a run's saved configuration (the ``config`` of its metrics.json)."""
        try:
            file = check_readable(path, missing="not a readable JSON file (no such file)",
                                  expected="a JSON file (a run's metrics.json)")
            if file.stat().st_size > CONFIG_BYTES:
                raise UserError(f"{path}: {file.stat().st_size} bytes, more than the {CONFIG_BYTES} bytes a "
                                f"configuration may take (a run's metrics.json takes a few hundred KiB)")
            saved = json.loads(file.read_text())
        except UserError as error:
            raise UserError(f"--config={error}") from None
        except RecursionError:
            raise UserError(f"--config={path}: JSON nested too deeply to be a configuration (a run's metrics.json "
                            f"nests a few levels)") from None
        except (OSError, ValueError) as error:
            raise UserError(f"--config={path}: not a readable JSON file ({error})") from None
        config = saved.get("config", saved) if isinstance(saved, dict) else None
        if not isinstance(config, dict):
            raise UserError(f"--config={path}: expected a JSON object (a run's metrics.json)")
        by_name = {option.name: option for option in self.options}
        unknown = sorted(set(config) - set(by_name))
        if unknown:
            raise UserError(f"--config={path}: {unknown[0]!r} is not an option of {self.prog}")
        try:
            return {key: self.value(by_name[key], config_text(key, value)) for key, value in config.items()
                    if key not in self.not_from_config}
        except UserError as error:
            raise UserError(f"--config={path}: {error}") from None

    def positional_values(self, words: list[str]) -> list:
        """Assign the positional words in order: every ``1`` takes one, the ``?`` ones take what is
        left in order, a ``+`` takes one plus every spare word."""
        counts = [p.count for p in self.positionals]
        spare = len(words) - counts.count("1") - counts.count("+")
        if spare < 0 or ("+" not in counts and spare > counts.count("?")):
            raise UserError(self.usage())
        values = []
        for p in self.positionals:
            if p.count == "1":
                values.append(words.pop(0))
            elif p.count == "?":
                values.append(words.pop(0) if spare > 0 else p.default)
                spare -= 1
            else:
                values.append([words.pop(0) for _ in range(1 + max(spare, 0))])
                spare = 0
        return values


def config_text(key: str, value) -> str:
    """A ``--config`` file's value as it would be typed on the command line (``null``: ``none``), so
    that it is read and checked exactly as the option's command-line text."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, list) and value and all(isinstance(item, (int, float)) and not isinstance(item, bool)
                                                 for item in value):
        return ",".join(map(str, value))  # several numbers, e.g. --acceleration=4,8,10
    raise UserError(f"option --{key}={json.dumps(value)}: expected a number, true/false, text or null")


def _next_value(argv: list[str], i: int, key: str, boolean: bool = False) -> str | None:
    """The word after ``--key`` as its value: for a boolean only a true/false word (else None)."""
    following = argv[i + 1] if i + 1 < len(argv) else None
    if boolean:
        return following if following is not None and following.lower() in TRUE_WORDS + FALSE_WORDS else None
    if following is None or following.startswith("--"):
        raise UserError(f"option --{key} needs a value: --{key}=VALUE")
    return following


def _show(value) -> str:
    """A default as it is typed on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return "''"
    return str(value)


def _facts(option: Option) -> list[str]:
    """What ``--help`` says of an option besides its comment: default and allowed values."""
    facts = ["required" if option.default is REQUIRED else f"default: {_show(option.default)}"]
    if option.choices:
        facts.append(f"one of: {', '.join(map(str, option.choices))}")
    elif isinstance(option.default, bool):
        facts.append("true or false")
    return facts


def _help_line(name: str, text: str, facts: list[str] = ()) -> str:
    """``  --name   help [default: x; one of: a, b]`` wrapped at 100 columns."""
    body = " ".join(part for part in (text, f"[{'; '.join(facts)}]" if facts else "") if part)
    return textwrap.fill(body, width=100, initial_indent=f"  {name:<20} ", subsequent_indent=" " * 23,
                         break_on_hyphens=False)


def run_command(function, argv: list[str] | None = None, *, prog: str | None = None,
                options: list[Option] | None = None, choices: dict | None = None, parsers: dict | None = None,
                exclude=()):
    """Parse ``argv`` (default ``sys.argv[1:]``) for ``function`` and call it.

    Positional parameters become positional arguments (``*args``: one or more), keyword-only ones
    options (:func:`options_from_signature`, or ``options`` when given); ``--help`` is generated
    from them and the function's docstring. Raises ``UserError`` for bad input; use it inside
    :func:`cli_errors`. Returns the function's result.
    """
    argv = sys.argv[1:] if argv is None else argv
    positionals = positionals_of(function)
    if options is None:
        named = [p.name for p in inspect.signature(function).parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
        options = options_from_signature(function, choices=choices, parsers=parsers, exclude=(*exclude, *named))
    command = Command(prog or f"python {Path(sys.argv[0]).name}", inspect.getdoc(function) or "", options, positionals)
    words, given = command.parse(argv)
    values = {**{option.name: option.default for option in options}, **given}
    positional = [value for p, value in zip(command.positionals, words) if p.count != "+"]
    many = [value for p, value in zip(command.positionals, words) if p.count == "+"]
    return function(*positional, *(many[0] if many else ()), **values)


# ----------------------------------------------------------------------------- files
STALE_TEMP = re.compile(r"\..+\.tmp(\d+)")  # what atomic_write leaves when it is killed mid-write (group: its PID)
PROC_LOCKS = Path("/proc/locks")
_held_locks: dict[Path, int] = {}  # run folder -> a descriptor of it that this process holds a flock on
SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
                 (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_readable(path, *, missing: str = "no such file", expected: str = "a file", folder_ok: bool = False,
                   error: type[UserError] = UserError) -> Path:
    """``path`` if it is a regular file (or, with ``folder_ok``, a folder), else ``error`` in one line:
    missing (``missing``), a loop of symbolic links, unreadable, a folder, or a named pipe, device or
    socket (reading those can wait forever); ``expected`` names what was expected."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as failure:
        if failure.errno == errno.ELOOP:
            raise error(f"{path}: a loop of symbolic links (it never reaches a file)") from None
        if failure.errno in (errno.ENOENT, errno.ENOTDIR):
            raise error(f"{path}: {missing}") from None
        if failure.errno == errno.ENAMETOOLONG:
            raise error(f"{str(path)[:40]}...: a path of {len(os.fsencode(path))} bytes, or a name in it, too long "
                        f"for the file system ({failure.strerror})") from None
        raise error(f"{path}: cannot be read ({failure.strerror or failure})") from None
    if stat.S_ISDIR(mode) and not folder_ok:
        raise error(f"{path}: is a folder, expected {expected}")
    special = next((what for test, what in SPECIAL_FILES if test(mode)), None)
    if special:
        raise error(f"{path}: is {special}, not a regular file; expected {expected}")
    return path


def check_run_name(name: str) -> str:
    """Return ``name`` if it is a safe single path component (letters, digits, ``._-``)."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}", name or "") or ".." in name:
        raise UserError(f"run name {name!r}: use 1-100 letters, digits, '.', '_' or '-', starting with a letter, "
                        f"a digit or '_', without '..'")
    return name


def _lock_holder(directory: Path) -> str:
    """`` (process PID)`` of the process holding a flock on ``directory``, where /proc/locks tells."""
    inode = str(directory.stat().st_ino)
    with suppress(OSError):
        for fields in map(str.split, PROC_LOCKS.read_text().splitlines()):
            if "FLOCK" in fields and fields[-3].rsplit(":", 1)[-1] == inode:
                return f" (process {fields[-4]})"
    return ""


def _claim(directory: Path) -> None:
    """Hold an exclusive flock on the folder ``directory`` for the life of this process (or until
    :func:`release_run_dirs`); refuse at once if another process holds it. The operating system
    releases the lock when its holder ends, even by SIGKILL; no lock file is left behind."""
    if directory in _held_locks:
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise UserError(f"{directory} is in use by a run in progress{_lock_holder(directory)}: wait for it to end, "
                        f"or choose another name") from None
    _held_locks[directory] = descriptor


def run_in_progress(directory: Path) -> str | None:
    """`` (process PID)`` (or ``""``) if another process holds the claim on the run folder
    ``directory`` (:func:`make_run_dirs`): its run is still going; None if none does (or this process does)."""
    if Path(directory) in _held_locks:
        return None
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _lock_holder(directory)
    finally:
        os.close(descriptor)
    return None


def _refuse_earlier_run(dirs: list[Path]) -> None:
    """Refuse folders that hold what an earlier run wrote (stale temporary files aside), giving up
    the claim on the first."""
    for directory in dirs:
        if directory.is_dir() and any(not STALE_TEMP.fullmatch(p.name) for p in directory.iterdir()):
            release_run_dirs(dirs[0])
            raise UserError(f"{directory} already holds an earlier run: choose another name, "
                            f"or pass --resume to continue that run")


def make_run_dirs(roots: list[Path], name: str, resume: bool = False) -> list[Path]:
    """Create ``root/name`` under every root and claim the run: this process holds a lock on the
    first folder, so a second process with the same name is refused at once, whatever the timing.
    An earlier run is refused unless resuming; stale temporary files of interrupted writes are
    removed. Raises ``UserError`` if a folder cannot be written or already belongs to a run.
    """
    check_run_name(name)
    dirs = [Path(root) / name for root in roots]
    for directory in dirs:
        check_name_length(directory, temporary=False)
    for directory in dirs:
        if directory.exists() and not directory.is_dir():
            raise UserError(f"{directory} exists and is a file, not a folder: move or remove it, or choose "
                            f"another name")
    claimed = dirs[0].is_dir()
    if claimed:
        _claim(dirs[0])  # a run in progress is named before anything else
    if not resume:
        _refuse_earlier_run(dirs)
    for directory in dirs:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = temporary_name(directory / "write-test")  # a kill before unlink leaves a stale temporary
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise UserError(f"{directory}: cannot write there ({error.strerror or error})") from None
    if not claimed:
        _claim(dirs[0])
        if not resume:  # again under the lock: a run of this name may have started and ended meanwhile
            _refuse_earlier_run(dirs)
    for directory in dirs:
        for stale in directory.iterdir():
            if STALE_TEMP.fullmatch(stale.name):
                stale.unlink(missing_ok=True)
    return dirs


def release_run_dirs(directory: Path) -> None:
    """Give up this process's claim on a run folder of :func:`make_run_dirs` (a no-op if not held)."""
    descriptor = _held_locks.pop(Path(directory), None)
    if descriptor is not None:
        os.close(descriptor)


_folder_batches: list[list[Path]] = []  # the folders created inside the open written_together blocks


def make_folder(path) -> Path:
    """Create the folder ``path`` and its parents if needed; a one-line ``UserError`` if it cannot be.
    Inside :func:`written_together` the folders it creates are removed again, if empty, when the
    block fails."""
    path = Path(path)
    created = [folder for folder in (path, *path.parents) if not folder.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = "a file is in the way" if isinstance(error, (FileExistsError, NotADirectoryError)) else error.strerror
        raise UserError(f"{path}: cannot create this folder ({reason or error})") from None
    if _folder_batches:
        _folder_batches[-1].extend(reversed(created))  # parents first: removed last
    return path


def atomic_write(path, content, then: str = "run the command again", new: bool = False) -> None:
    """Write ``path`` through a temporary file beside it and a rename, so a kill never leaves half a
    file and the previous version survives until the new one is complete. With ``new``, the file is
    claimed at the end by a hard link that fails if ``path`` exists, so a file that appeared there
    meanwhile is never replaced. An ``OSError`` (disk full, a file where a folder should be), or a
    writer's ``RuntimeError`` (``torch.save`` wraps them), becomes a one-line ``UserError``; for a full
    disk it says to free space and then ``then``. Inside :func:`written_together` the file gets its
    name only when the whole batch is written.

    content: text, bytes, or a function ``write(file)`` given the binary file (``torch.save``,
    ``np.savez``, ``savefig``, ...).
    """
    path = Path(path)
    tmp = temporary_name(path)
    kept = False
    try:
        with _write_errors(path, then):
            with open(tmp, "wb") as file:
                if callable(content):
                    content(file)
                else:
                    file.write(content.encode() if isinstance(content, str) else content)
            if _batches:
                _batches[-1].append((tmp, path, new))
                kept = True
            else:
                _name(tmp, path, new)
    finally:
        if not kept:
            with suppress(OSError):
                tmp.unlink()


_batches: list[list] = []  # the writes of the open written_together blocks: (temporary, path, new)


@contextmanager
def written_together():
    """A command's outputs, all or none: every :func:`atomic_write` inside the block writes its
    temporary file only, and the files get their names one after another (renames: microseconds)
    when the block ends without error. If it fails (an error, a full disk, Ctrl-C) no output gets
    its name and the temporaries are removed, and so are the folders :func:`make_folder` created in
    it, if empty; a kill leaves temporaries only, which the next command removes. If one of the
    names cannot be claimed (a file appeared there), those already claimed in the block are removed."""
    pending, folders, claimed = [], [], []
    _batches.append(pending)
    _folder_batches.append(folders)
    try:
        try:
            yield
        finally:
            _batches.pop()
            _folder_batches.pop()
        for tmp, path, new in pending:
            existed = os.path.lexists(path)
            with _write_errors(path, "run the command again"):
                _name(tmp, path, new)
            if not existed:
                claimed.append(path)
    except BaseException:
        _remove([tmp for tmp, _, _ in pending] + claimed[::-1])
        for folder in reversed(folders):
            with suppress(OSError):
                folder.rmdir()  # only if empty
        raise
    _remove([tmp for tmp, _, _ in pending])  # a hard link's source; a rename left none


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with suppress(OSError):
            path.unlink()


@contextmanager
def _write_errors(path: Path, then: str):
    """Failed writes of ``path`` as one-line ``UserError``s (see :func:`atomic_write`)."""
    try:
        yield
    except FileExistsError:
        raise UserError(f"{path}: appeared while this command ran; it is left as it is and nothing was written "
                        f"there: choose another name") from None
    except (OSError, RuntimeError) as error:
        full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error)
        if full:
            raise UserError(f"{path}: not written, the disk is full ({os.strerror(errno.ENOSPC)}); its previous "
                            f"version, if any, is unchanged: free some space, then {then}") from None
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0][:160]
        raise UserError(f"{path}: cannot be written ({reason})") from None


def _name(tmp: Path, path: Path, new: bool) -> None:
    """Give the complete temporary file ``tmp`` its name ``path``: a rename, or with ``new`` a
    claim that never replaces a file (:func:`_claim_new`)."""
    if new:
        _claim_new(tmp, path)
    else:
        os.replace(tmp, path)


def check_name_length(path: Path, temporary: bool = True) -> None:
    """Refuse a path longer than file systems hold (``PATH_MAX`` bytes in all, ``NAME_MAX`` a name;
    for the last, with its temporary file's prefix and suffix when ``temporary``), before anything
    is looked up."""
    whole = len(os.fsencode(Path(path).absolute()))
    if whole >= PATH_MAX:
        raise UserError(f"{str(path)[:40]}...: a path of {whole} bytes, too long for the file system (less than "
                        f"{PATH_MAX})")
    names = [part for part in Path(path).parts if part != "/"]
    longest = [NAME_MAX] * (len(names) - 1) + [NAME_MAX - (len(temporary_name(Path(path)).name) - len(Path(path).name))
                                               * temporary]
    for name, limit in zip(names, longest):
        if len(name.encode()) > limit:
            raise UserError(f"{name[:40]}...: a name of {len(name.encode())} bytes, too long for the file system "
                            f"(at most {limit})")


def _claim_new(tmp: Path, path: Path) -> None:
    """Give the complete file ``tmp`` the name ``path``, failing (``FileExistsError``) if a file has
    it: a hard link, which cannot replace a file. File systems without hard links (FAT, some network
    ones) get a check then a rename, which leaves a window of microseconds."""
    try:
        os.link(tmp, path)
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(tmp, path)


def temporary_name(path: Path) -> Path:
    """The temporary file of this process for ``path``: ``.NAME.tmpPID`` beside it."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files (or folders) that killed processes left for ``path`` (``.NAME.tmpPID``
    of a process that no longer runs); those of a live process are its writes in progress."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp(\d+)")
    with suppress(OSError):
        for stale in path.parent.iterdir():
            match = pattern.fullmatch(stale.name)
            if match and not _process_alive(int(match.group(1))):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)


def remove_stale_temporaries_in(folder: Path) -> None:
    """Remove every temporary file in ``folder`` that a killed process left (:func:`atomic_write`'s
    ``.NAME.tmpPID`` of a process that no longer runs), so that it never counts as an earlier result."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:  # no such folder: nothing to remove
        return
    for stale in entries:
        match = STALE_TEMP.fullmatch(stale.name)
        if match and not _process_alive(int(match.group(1))):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with suppress(OSError):
                    stale.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or no process number at all: leave its file alone
    return True


if __name__ == "__main__":
    not_a_command("cli.py")

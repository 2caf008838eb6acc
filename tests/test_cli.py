"""One command-line style for every entry point: --help from the defaults' source, --key=value and
--key value, unknown options refused with a suggestion (exit status 2, one line)."""
import pytest

from cli import Command, Option, Positional, UserError, atomic_write, options_from_call, run_command
from helpers import run_tool

ENTRY_POINTS = [  # (script and command, an option its help must list)
    (["compare.py"], "--baselines"),
    (["reconstruct.py"], "--checkpoint"),
    (["formats.py", "convert"], "--frames"),
    (["sampling.py"], "--acceleration"),
    (["benchmarks/study.py"], "--only"),
    (["benchmarks/bench_train.py"], "--cascades"),
    (["benchmarks/bench_infer.py"], "--repeats"),
]


@pytest.mark.parametrize("command, option", ENTRY_POINTS, ids=[" ".join(c) for c, _ in ENTRY_POINTS])
def test_help_exits_0_and_lists_the_options(tmp_path, command, option):
    result = run_tool(command[0], [*command[1:], "--help"], tmp_path)
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert result.stdout.startswith("usage: python ") and f"  {option} " in result.stdout
    assert "[default: " in result.stdout and "--help " in result.stdout
    assert not any(tmp_path.iterdir()), "--help runs nothing"


def test_unknown_option_of_a_benchmark_is_one_line_exit_2(tmp_path):
    result = run_tool("benchmarks/bench_infer.py", ["--repeat=3"], tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: unknown option --repeat (did you mean --repeats?); python benchmarks/bench_infer.py --help lists them"]


def documented(path,  # the file to write
               *, count: int = 2,  # how many (>= 1)
               # style
               kind: str = "a",  # 'a' | 'b'
               loud: bool = False,  # shout
               limit: float | None = None,  # a number or None
               name: str):  # required
    """Write something."""
    return path, count, kind, loud, limit, name


def test_options_and_help_come_from_the_signature_and_its_comments():
    result = run_command(documented, ["out.txt", "--count", "3", "--loud", "--limit=none", "--name", "x"])
    assert result == ("out.txt", 3, "a", True, None, "x")
    assert run_command(documented, ["p", "--loud", "false", "--limit", "2.5", "--name=y"]) == \
        ("p", 2, "a", False, 2.5, "y")
    with pytest.raises(SystemExit) as exited:
        run_command(documented, ["--help"], choices={"kind": ("a", "b")})
    assert exited.value.code == 0


def test_help_text(capsys):
    with pytest.raises(SystemExit):
        run_command(documented, ["--help"], prog="python tool.py", choices={"kind": ("a", "b")})
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "usage: python tool.py PATH --name=VALUE [--key=value ...] [--debug] [--help]"
    assert "PATH                 the file to write" in text and " style:" in text
    assert "--count              how many (>= 1) [default: 2]" in text
    assert "--kind               'a' | 'b' [default: a; one of: a, b]" in text
    assert "--loud               shout [default: false; true or false]" in text
    assert "--name               required [required]" in text


@pytest.mark.parametrize("argv, message", [
    (["p", "--cont=3", "--name=x"], r"unknown option --cont \(did you mean --count\?\)"),
    (["p", "--count=three", "--name=x"], "option --count=three: invalid literal"),
    (["p", "--kind=c", "--name=x"], "--kind='c': choose one of a, b"),
    (["p"], "option --name is required"),
    (["p", "q", "--name=x"], "usage: "),
    (["p", "--name"], "option --name needs a value"),
    (["p", "-n", "x"], "unknown option -n"),
])
def test_bad_command_lines_are_refused(argv, message):
    with pytest.raises(UserError, match=message):
        run_command(documented, argv, choices={"kind": ("a", "b")})


def test_options_of_a_call_in_a_file(tmp_path):
    (tmp_path / "script.py").write_text('if True:\n    run("x",\n        # group\n        size=3,  # how big\n'
                                        '        rate=-1e-3,  # how fast\n        mode="on")  # on or off\n')
    options = options_from_call(tmp_path / "script.py", "run")
    assert options == [Option("size", 3, "how big", section="group"),
                       Option("rate", -1e-3, "how fast", section="group"),
                       Option("mode", "on", "on or off", section="group")]
    (tmp_path / "bad.py").write_text("run(size=2 * 3)\n")
    with pytest.raises(UserError, match="the value of size must be a literal"):
        options_from_call(tmp_path / "bad.py", "run")


def test_positionals_one_or_more():
    command = Command("python x.py", "", [Option("out", "o.npz")], [Positional("INPUT", count="+")])
    assert command.parse(["a", "--out", "b.npz", "c"]) == ([["a", "c"]], {"out": "b.npz"})
    with pytest.raises(UserError, match="usage"):
        command.parse(["--out=b.npz"])


def test_atomic_write_replaces_whole_files_only(tmp_path):
    path = tmp_path / "file.txt"
    atomic_write(path, "first")
    atomic_write(path, b"second")
    assert path.read_text() == "second"

    def fail(file):
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(UserError, match="file.txt: cannot be written \\(disk full\\)"):
        atomic_write(path, fail)
    assert path.read_text() == "second" and [p.name for p in tmp_path.iterdir()] == ["file.txt"]

"""The docs cannot drift from the code: every command they show is checked against the real parsers, and every
relative link points at a file that exists.  Nothing is run.

* A fenced block opened with ```` ```bash runnable ```` (see docs/README.md) is a block a reader can paste as it
  is.  Each command in it is parsed with the parser of what it runs: ``python train.py`` / ``accelerate launch
  train.py`` with ``sdpo.config.build_parser``, ``python -m sdpo.precompute`` with the cache's parser, any other
  ``python -m sdpo.X`` / ``eval.X`` module and ``python eval/X.py`` / ``bench/X.py`` file with the parser its own
  ``main`` builds (caught at ``parse_args``, before the module does anything), ``bash scripts/train/X.sh`` extra
  flags with train.py's parser and ``bash scripts/eval/test_vs.sh`` with ``eval/winrate.py``'s.  A parse error
  (an unknown flag, a bad choice, a missing required flag) fails the test.
* Every other ``bash`` block (real-scale examples with placeholders such as ``RUN/``) gets the weaker check: the
  file or module exists and every ``--flag`` it passes is one its parser knows.
* Shell syntax the docs use is followed, not run: ``\\`` continuations, ``NAME="..."`` assignments and ``$NAME``
  / ``${NAME:+word}`` expansions, ``for NAME in ...; do ... done`` loops (each value is checked), ``A=b`` prefixes,
  ``;``, ``&&``, ``|`` and redirections.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import runpy
import shlex
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELLS = {"bash", "sh", "shell", "console"}
PYTHONS = {"python", "python3"}


# ---------------------------------------------------------------------------------------------- markdown


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    info: list[str]
    text: str

    @property
    def runnable(self) -> bool:
        return "runnable" in self.info[1:]

    @property
    def shell(self) -> bool:
        return bool(self.info) and self.info[0] in SHELLS

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _scan(path: Path) -> tuple[list[Block], list[tuple[int, str]]]:
    """The fenced blocks of a Markdown file, and its other lines (numbered from 1)."""
    blocks, prose, lines, i = [], [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        m = re.match(r"^( {0,3})(```+|~~~+)(.*)$", lines[i])
        if not m or (m.group(2)[0] == "`" and "`" in m.group(3)):  # CommonMark: no backtick in a ``` info string
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        fence, start, body = m.group(2), i, []
        i += 1
        while i < len(lines) and not re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[i]):
            body.append(lines[i][len(m.group(1)) :] if lines[i].startswith(m.group(1)) else lines[i])
            i += 1
        blocks.append(Block(path, start + 1, m.group(3).split(), "\n".join(body)))
        i += 1
    return blocks, prose


def fenced_blocks(path: Path) -> list[Block]:
    return _scan(path)[0]


ALL_BLOCKS = [b for p in DOCS for b in fenced_blocks(p)]
RUNNABLE = [b for b in ALL_BLOCKS if b.runnable]
OTHER_SHELL = [b for b in ALL_BLOCKS if b.shell and not b.runnable]


# ---------------------------------------------------------------------------------------------- shell


def logical_lines(text: str) -> list[str]:
    """Lines with ``\\`` continuations joined and quotes that span lines kept together; comments dropped."""
    out, buf, continued = [], "", False
    for raw in text.splitlines():
        if buf == "" and raw.lstrip().startswith("#"):
            continue
        buf = raw if not buf else (buf + raw if continued else f"{buf}\n{raw}")
        continued = buf.endswith("\\")
        if continued:
            buf = buf[:-1] + " "
            continue
        try:
            shlex.split(buf, comments=True)
        except ValueError:  # an open quote: the next line continues it
            continue
        out.append(buf)
        buf = ""
    if buf:
        out.append(buf)
    return out


VAR = re.compile(r"\$\{(\w+)(?:(:[-+])([^}]*))?\}|\$(\w+)")


def expand(line: str, env: dict[str, str], strict: bool) -> str:
    """``$NAME``, ``${NAME}``, ``${NAME:+word}``, ``${NAME:-word}`` from the block's own assignments and loops.
    An unknown variable is an error in a runnable block and the placeholder ``X`` elsewhere."""

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(4)
        if name not in env:
            if strict:
                raise AssertionError(f"${name} is not set in the block (a runnable block must define what it uses)")
            return "X"
        value, op, word = env[name], m.group(2), m.group(3)
        if op == ":+":
            return word if value else ""
        if op == ":-":
            return value or word
        return value

    return VAR.sub(sub, line)


def split_commands(line: str) -> list[list[str]]:
    """A logical line's simple commands (split at ``;``, ``&&``, ``||``, ``|``, ``&``), redirections dropped."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lex.whitespace_split = True
    lex.commenters = "#"
    commands, current, tokens = [], [], list(lex)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in (";", "&&", "||", "|", "&", ";;"):
            commands.append(current)
            current = []
        elif tok in (">", ">>", "<", "2>", "&>") or set(tok) <= set("<>&"):
            i += 1  # the file name that follows
        else:
            current.append(tok)
        i += 1
    commands.append(current)
    return [c for c in commands if c]


@dataclass
class Command:
    argv: list[str]
    source: str  # the logical line it came from (for messages)


def commands_of(block: Block) -> list[Command]:
    """Every simple command of a block, loops unrolled over their values, variables expanded."""
    strict = block.runnable
    lines = logical_lines(block.text)
    out: list[Command] = []

    def run(lines: list[str], env: dict[str, str]) -> None:
        i = 0
        while i < len(lines):
            line = lines[i]
            m = re.match(r"^\s*for\s+(\w+)\s+in\s+(.*?);\s*do\b(.*)$", line)
            if m:
                depth, body, j = 1, [m.group(3)] if m.group(3).strip() else [], i + 1
                if re.search(r"(^|;)\s*done\s*$", m.group(3)):  # for ...; do ...; done on one line
                    body, j = [re.sub(r";?\s*done\s*$", "", m.group(3))], i
                while j < len(lines) and j > i:
                    s = lines[j].strip()
                    depth += bool(re.match(r"^for\b", s))
                    if re.match(r"^(.*;\s*)?done\b", s):
                        depth -= 1
                        if depth == 0:
                            head = re.sub(r";?\s*done\b.*$", "", s)
                            if head:
                                body.append(head)
                            break
                    body.append(lines[j])
                    j += 1
                for value in shlex.split(expand(m.group(2), env, strict)):
                    run(body, {**env, m.group(1): value})
                i = j + 1
                continue
            for argv in split_commands(expand(line, env, strict)):
                while argv and re.match(r"^\w+=", argv[0]):  # NAME=value [command]
                    name, value = argv.pop(0).split("=", 1)
                    if not argv:
                        env[name] = value
                if argv:
                    out.append(Command(argv, line.strip()))
            i += 1

    run(lines, {})
    return out


# ---------------------------------------------------------------------------------------------- parsers


class _Captured(BaseException):  # BaseException: passes any `except Exception` (and cli_main's UserError handler)
    def __init__(self, parser: argparse.ArgumentParser, args: list[str]):
        self.parser, self.args = parser, args


@contextlib.contextmanager
def _capture_parse(prog: str, argv: list[str]):
    """While active, the first ``ArgumentParser.parse_args`` call stops the program with its parser and argv."""
    real, saved_argv = argparse.ArgumentParser.parse_args, sys.argv

    def stop(self, args=None, namespace=None):
        raise _Captured(self, list(sys.argv[1:] if args is None else args))

    argparse.ArgumentParser.parse_args = stop
    sys.argv = [prog, *argv]
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = real
        sys.argv = saved_argv


def entry_parser(kind: str, target: str, argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser an entry point builds and the argv it hands it, caught before the program does anything."""
    if kind == "module" and target in ("sdpo.precompute", "sdpo.cache.precompute"):
        from sdpo.cache.precompute import build_parser

        return build_parser(), argv
    if kind == "file" and target == "train.py":
        from sdpo.config import build_parser

        return build_parser(), argv
    if kind == "module" and target == "sdpo.online":  # its flags and train.py's, split by the driver itself
        from sdpo.online.options import command_parser

        return command_parser(), argv
    with _capture_parse(target, argv), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # runpy: "found in sys.modules" for modules the test imported already
        try:
            if kind == "module":
                runpy.run_module(target, run_name="__main__", alter_sys=False)
            else:
                runpy.run_path(str(ROOT / target), run_name="__main__")
        except _Captured as c:
            return c.parser, c.args
    raise AssertionError(f"{target}: ran to the end without parsing any arguments")


def train_parser() -> argparse.ArgumentParser:
    from sdpo.config import build_parser

    return build_parser()


def option_strings(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Every option of ``parser`` and of the sub-command ``argv`` picks, if it has sub-commands."""
    known = {s for a in parser._actions for s in a.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for tok in argv:
                if tok in action.choices:
                    known |= option_strings(action.choices[tok], [])
                    break
    return known


def parse_or_fail(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """``None`` when ``argv`` parses (``--help`` too), else argparse's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as e:
        return None if e.code in (0, None) else (err.getvalue().strip().splitlines() or ["exit 2"])[-1]
    except Exception as e:  # sdpo.config's parser raises UserError with the one-line message
        return f"{type(e).__name__}: {e}"
    return None


def unknown_flags(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    known = option_strings(parser, argv)
    flags = [t.strip("[]").split("=", 1)[0] for t in argv if t.strip("[]").startswith("-")]
    return [f for f in flags if f not in known and not re.fullmatch(r"-\d[\d.e+-]*", f) and f != "--"]


def check(parser: argparse.ArgumentParser, argv: list[str], full: bool) -> str | None:
    if full:
        return parse_or_fail(parser, argv)
    bad = unknown_flags(parser, argv)
    return f"unknown flag(s) {', '.join(bad)}" if bad else None


# ---------------------------------------------------------------------------------------------- commands

TRAIN_SCRIPT_OPTIONS = {"--dry-run", "--cpu", "--no-safeguard", "--help", "-h"}


def check_command(cmd: Command, full: bool) -> str | None:
    """Why a documented command would not run as written, or None.  Commands of other programs are skipped."""
    argv = [a for a in cmd.argv if a != "..."]
    prog = argv[0]
    if prog == "accelerate" and argv[1:2] == ["launch"]:
        return check_accelerate(argv[2:], full)
    if prog == "torchrun":
        return check_torchrun(argv[1:], full)
    if prog in PYTHONS and argv[1:3] == ["-m", "torch.distributed.run"]:
        return check_torchrun(argv[3:], full)
    if prog in PYTHONS:
        return check_python(argv[1:], full)
    if prog == "bash":
        return check_script(argv[1:], full)
    return None


def check_python(argv: list[str], full: bool) -> str | None:
    if not argv:
        return None
    if argv[0] == "-m":
        module, rest = argv[1], argv[2:]
        if module.split(".")[0] not in ("sdpo", "eval", "bench"):
            return None if importlib.util.find_spec(module.split(".")[0]) else f"no module {module}"
        if importlib.util.find_spec(module) is None:
            return f"no module {module}"
        return check(*entry_parser("module", module, rest), full)
    script, rest = argv[0], argv[1:]
    if not (ROOT / script).is_file():
        return f"no file {script}"
    parser, args = entry_parser("file", script, rest)
    return check(parser, args, full)


def check_accelerate(argv: list[str], full: bool) -> str | None:
    """``accelerate launch [its options] (SCRIPT.py | -m MODULE) ARGS``: accelerate's options against its own
    parser's names, the rest as ``python`` would get it."""
    from accelerate.commands.launch import launch_command_parser

    i = 0
    while i < len(argv) and not (argv[i].endswith(".py") or argv[i] == "-m"):
        i += 1
    if i == len(argv):
        return "accelerate launch: no script or -m MODULE"
    bad = [f for f in unknown_flags(launch_command_parser(), argv[:i]) if f not in ("-m",)]
    if bad:
        return f"accelerate launch: unknown flag(s) {', '.join(bad)}"
    return check_python(argv[i:], full)


def check_torchrun(argv: list[str], full: bool) -> str | None:
    """``torchrun [its options] SCRIPT.py ARGS``: torchrun's options against its parser, the script as python's."""
    from torch.distributed.run import get_args_parser

    i = 0
    while i < len(argv) and not argv[i].endswith(".py"):
        i += 1
    if i == len(argv):
        return "torchrun: no script"
    bad = unknown_flags(get_args_parser(), argv[:i])
    return f"torchrun: unknown flag(s) {', '.join(bad)}" if bad else check_python(argv[i:], full)


def check_script(argv: list[str], full: bool) -> str | None:
    script, rest = argv[0], argv[1:]
    if not (ROOT / script).is_file():
        return f"no file {script}"
    if script.startswith("scripts/train/") and script != "scripts/train/common.sh":
        args, i = [], 0  # the launcher's own options, then train.py's flags
        while i < len(rest):
            if rest[i] in TRAIN_SCRIPT_OPTIONS:
                pass
            elif rest[i] == "--method":
                i += 1
            elif not rest[i].startswith("--method="):
                args.append(rest[i])
            i += 1
        if full and "--pretrained_model_name_or_path" not in args:
            args = ["--pretrained_model_name_or_path", "MODEL", *args]
        if script.endswith("_online.sh"):  # the round driver's flags too; the recipe sets the required ones
            from sdpo.online.options import command_parser

            needed = ["--out", "O", "--rounds", "1", "--prompts", "P", "--samples_per_prompt", "2", "--reward", "R",
                      "--steps_per_round", "1"]  # fmt: skip
            return check(command_parser(), [*needed, *args] if full else args, full)
        return check(train_parser(), args, full)
    if script == "scripts/eval/test_vs.sh":
        return check(*entry_parser("file", "eval/winrate.py", rest), full)
    return None


# ---------------------------------------------------------------------------------------------- tests


def block_problems(block: Block) -> list[str]:
    problems = []
    try:
        cmds = commands_of(block)
    except AssertionError as e:
        return [str(e)]
    for cmd in cmds:
        why = check_command(cmd, full=block.runnable)
        if why:
            problems.append(f"{' '.join(cmd.argv)[:160]}\n    -> {why}")
    return problems


def test_the_docs_have_runnable_blocks():
    assert len(RUNNABLE) >= 10, [b.where() for b in RUNNABLE]


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.where() for b in RUNNABLE])
def test_runnable_block_parses_with_the_real_parsers(block):
    assert commands_of(block), f"{block.where()}: a runnable block without a command"
    problems = block_problems(block)
    assert not problems, f"{block.where()}:\n" + "\n".join(problems)


@pytest.mark.parametrize("block", OTHER_SHELL, ids=[b.where() for b in OTHER_SHELL])
def test_other_shell_block_uses_existing_files_and_flags(block):
    problems = block_problems(block)
    assert not problems, f"{block.where()}:\n" + "\n".join(problems)


def test_each_docs_page_opens_with_a_runnable_example():
    """docs/README.md (the index) aside, the first fenced block of every page is a runnable example."""
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name == "README.md":
            continue
        blocks = fenced_blocks(page)
        assert blocks and blocks[0].runnable, f"{page.relative_to(ROOT)}: the first block is not ```bash runnable"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"[^\w\- ]", "", text.lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    for _, line in _scan(path)[1]:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            found.add(s if n == 0 else f"{s}-{n}")
            seen[s] = n + 1
    return found


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def links(path: Path) -> list[tuple[int, str]]:
    return [(n, m.group(1)) for n, line in _scan(path)[1] for m in LINK.finditer(re.sub(r"`[^`]*`", "", line))]


def link_problems(page: Path) -> list[str]:
    bad = []
    for n, target in links(page):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            bad.append(f"line {n}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"line {n}: {target} (no heading #{anchor} in {dest.name})")
    return bad


@pytest.mark.parametrize("page", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_relative_links_and_anchors_resolve(page):
    bad = link_problems(page)
    assert not bad, f"{page.relative_to(ROOT)}:\n" + "\n".join(bad)


def test_no_machine_paths_in_the_docs():
    for page in DOCS:
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"/(work|home|root|tmp)/\w", text), f"{page.relative_to(ROOT)} names a local path"


# ---------------------------------------------------------------------------------------------- the checker itself


def _block(text: str, runnable: bool = True) -> Block:
    return Block(ROOT / "README.md", 1, ["bash", "runnable"] if runnable else ["bash"], text)


def test_checker_refuses_a_flag_that_does_not_exist():
    ok = "python train.py --pretrained_model_name_or_path tiny/sd15 --max_train_steps 4"
    assert block_problems(_block(ok)) == []
    assert block_problems(_block(ok + " --no_such_flag 1"))
    assert block_problems(_block(ok.replace("4", "four")))  # a bad value is caught by the full parse
    assert block_problems(_block("python train.py --pretrained_model_name_or_path M --no_such_flag", False))
    assert block_problems(_block("python -m sdpo.tiny model --kind nope --out tiny/x"))
    assert block_problems(_block("python eval/generate.py --weights_path w --no_such_flag", False))
    assert block_problems(_block("python -m sdpo.no_such_module --x 1"))
    assert block_problems(_block("bash scripts/train/no_such_recipe.sh"))
    assert block_problems(_block("bash scripts/train/sd15_dspo.sh --dry-run --no_such_flag 1", False))
    assert block_problems(_block("bash scripts/eval/test_vs.sh --json_a a --json_b b --no_such_flag", False))
    assert block_problems(_block("accelerate launch --no_such_option 2 train.py --pretrained_model_name_or_path M"))
    assert block_problems(_block("torchrun --nproc_per_node 2 train.py --pretrained_model_name_or_path M --no_such"))
    one_line_loop = "for s in 0 1; do python train.py --pretrained_model_name_or_path M --seed $s; done"
    assert block_problems(_block(one_line_loop)) == []
    assert block_problems(_block(one_line_loop.replace("--seed", "--sed")))
    assert block_problems(_block("python train.py --pretrained_model_name_or_path M --seed $UNSET"))  # runnable: set it


def test_checker_follows_loops_assignments_and_continuations():
    text = """T="--pretrained_model_name_or_path tiny/sd15
   --max_train_steps 4"
for sg in "" --use_winner_preserving; do
  python train.py $T --winner_preserving_mu 0.9 $sg \\
    --output_dir runs/dpo${sg:+_sdpo}   # a comment
done
printf 'a\\n' > tiny/p.txt && python -m sdpo.plot runs/dpo --out x.png"""
    cmds = commands_of(_block(text))
    assert [c.argv[-1] for c in cmds[:2]] == ["runs/dpo", "runs/dpo_sdpo"]
    assert "--use_winner_preserving" in cmds[1].argv and "--use_winner_preserving" not in cmds[0].argv
    assert cmds[2].argv[0] == "printf" and cmds[3].argv[:3] == ["python", "-m", "sdpo.plot"]
    assert block_problems(_block(text)) == []


def test_link_checker_catches_missing_files_and_anchors(tmp_path):
    assert slug("Objectives (`--train_method`)") == "objectives---train_method"
    assert slug("The safeguard's modes") == "the-safeguards-modes"
    page = tmp_path / "page.md"
    page.write_text(
        "# A title\n\n## Step 1: go\n\n```bash\n# not a heading\n```\n\n"
        "[ok](#step-1-go) [ok](page.md#a-title) [web](https://example.org/x) `[code](nowhere.md)`\n"
        "[bad](#not-a-heading) [gone](missing.md) ![img](missing.png)\n"
    )
    bad = link_problems(page)
    assert [b.split(" (")[0] for b in bad] == ["line 10: #not-a-heading", "line 10: missing.md", "line 10: missing.png"]

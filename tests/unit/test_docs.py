"""The docs stay true to the code: every `weaktok ...` command in README.md and docs/ parses with the real CLI,
every `make` target they name exists, every repository path they or the code cite exists, and the README stays a
map (<= 12 KB), not a manual."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.helpers import REPO
from weaktok.cli import build_parser

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"```(?:bash|sh|shell|console)?\n(.*?)```", re.S)
# a path inside the repository, as prose and code cite it: weaktok/..., docs/..., tests/..., cluster/..., ray_jobs/...
CITED = re.compile(r"(?<![\w/.-])((?:weaktok|docs|tests|cluster|ray_jobs)/[\w./-]*\w)(?![\w{])")
USER_FILES = {
    "cluster/hostfile"
}  # files a user writes (from cluster/hostfile.example), named in commands


def shell_lines(text: str) -> list[str]:
    """The commands of every fenced shell block, continuation lines joined, comments and prompts dropped."""
    out = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip().removeprefix("$ ")
            if line and not line.startswith("#"):
                out.append(line)
    return out


def weaktok_commands(line: str) -> list[list[str]]:
    """The argument lists of the `weaktok ...` invocations on one shell line (after env assignments, through
    `&&`/`;`/`|`)."""
    out = []
    for part in re.split(r"&&|;|\|", line):
        try:
            words = shlex.split(part, comments=False)
        except (
            ValueError
        ):  # a quote opened in one `|`/`;` part and closed in another: not a weaktok command
            continue
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value prefixes
            words = words[1:]
        if words and words[0] in ("weaktok", ".venv/bin/weaktok"):
            out.append(words[1:])
    return out


def documented(command: list[str]) -> str | None:
    """A command as the docs mean it: ``[--opt v]`` optional groups taken in; None for a fragment (``...``)."""
    text = " ".join(command)
    return None if "..." in text else text.replace("[", "").replace("]", "")


COMMANDS = sorted(
    {
        (doc.name, documented(c))
        for doc in DOCS
        for line in shell_lines(doc.read_text())
        for c in weaktok_commands(line)
        if documented(c)
    }
)


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 10, COMMANDS


@pytest.mark.parametrize("doc,command", COMMANDS)
def test_every_documented_weaktok_command_parses(doc, command):
    parser = build_parser()
    try:
        parser.parse_args(shlex.split(command))
    except SystemExit as e:  # argparse exits 2 on an unknown command or flag, 0 on --help
        assert e.code == 0, f"{doc}: `weaktok {command}` does not parse"


def test_every_documented_make_target_exists():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    named = {
        (doc.name, t)
        for doc in DOCS
        for line in shell_lines(doc.read_text())
        for t in re.findall(r"(?:^|&&|;)\s*make ([\w-]+)", line)
    }
    assert named, "no make target in the docs"
    assert sorted((d, t) for d, t in named if t not in targets) == []


def cited_paths(text: str) -> set[str]:
    return {m.rstrip(".") for m in CITED.findall(text) if "*" not in m and m not in USER_FILES}


def test_every_path_the_docs_cite_exists():
    missing = sorted(
        (doc.name, p)
        for doc in DOCS
        for p in cited_paths(doc.read_text())
        if not (REPO / p).exists()
    )
    assert missing == []


def test_every_docs_file_the_code_cites_exists():
    sources = [
        *(REPO / "weaktok").rglob("*.py"),
        *(REPO / "tests").rglob("*.py"),
        *(REPO / "cluster").rglob("*"),
    ]
    sources = [
        s for s in sources if s.name != "test_docs.py"
    ]  # this file names missing docs on purpose
    missing = sorted(
        (str(src.relative_to(REPO)), p)
        for src in sources
        if src.is_file()
        for p in re.findall(r"docs/[\w.-]+\.md", src.read_text(errors="ignore"))
        if not (REPO / p).exists()
    )
    assert missing == []


def test_no_file_cites_a_design_doc_the_repository_does_not_have():
    sources = [*(REPO / "weaktok").rglob("*.py"), *DOCS]
    assert [str(s.relative_to(REPO)) for s in sources if "DESIGN.md" in s.read_text()] == []


def test_readme_is_a_map_and_the_license_is_there():
    assert len((REPO / "README.md").read_bytes()) <= 12_000
    assert "Apache License" in (REPO / "LICENSE").read_text()


def test_the_checks_can_fail():
    assert weaktok_commands("FOO=1 weaktok train --config demo && weaktok bench") == [
        ["train", "--config", "demo"],
        ["bench"],
    ]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["no-such-command"])
    assert cited_paths("see weaktok/no_such_module.py and docs/nowhere.md.") == {
        "weaktok/no_such_module.py",
        "docs/nowhere.md",
    }

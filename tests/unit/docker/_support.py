"""Helpers for the deployment tests: read docker/compose.yaml and the Dockerfiles without Docker.

* ``interpolate`` resolves ``${VAR}`` / ``${VAR:-default}`` / ``${VAR-default}`` / ``${VAR:?msg}`` /
  ``${VAR?msg}`` / ``${VAR:+alt}`` / ``$VAR`` and ``$$`` as Compose does before it validates (no
  nested expressions: docker/compose.yaml uses none).
* ``parse_dockerfile`` returns the instructions (continuation lines joined, comments dropped).
* ``DockerIgnore`` applies a .dockerignore as BuildKit does: patterns in order, the last match
  wins, ``!`` re-includes, a pattern that matches a folder matches everything under it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
SCHEMA_FILE = DOCKER / "compose-spec.schema.json"

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def load_compose() -> dict:
    """The compose file as YAML sees it: anchors and ``<<`` merges resolved, nothing interpolated."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def load_schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


def variables(value) -> list[tuple[str, str | None, str | None]]:
    """Every ``(name, operator, argument)`` referenced in string values (not keys)."""
    if isinstance(value, dict):
        return [v for item in value.values() for v in variables(item)]
    if isinstance(value, list):
        return [v for item in value for v in variables(item)]
    if isinstance(value, str):
        return [(m.group("braced") or m.group("bare"), m.group("op"), m.group("arg"))
                for m in _VARIABLE.finditer(value) if not m.group("escaped")]
    return []


def interpolate(value, env: dict[str, str]):
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: _resolve(m, env), value)
    return value


def _resolve(match: re.Match, env: dict[str, str]) -> str:
    if match.group("escaped"):
        return "$"
    name = match.group("braced") or match.group("bare")
    op, arg = match.group("op"), match.group("arg")
    value = env.get(name)
    if op is None:
        return value or ""
    if op == ":-":
        return value if value else arg
    if op == "-":
        return value if value is not None else arg
    if op in (":?", "?"):
        if (not value) if op == ":?" else (value is None):
            raise KeyError(f"{name}: {arg}")
        return value
    if op == ":+":
        return arg if value else ""
    return arg if value is not None else ""  # "+"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    arguments: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    return instructions


def copy_instructions(instructions: list[Instruction]) -> list[tuple[list[str], str]]:
    """``(sources, destination)`` of every COPY/ADD from the build context (no ``--from``),
    the destination made absolute with the WORKDIR in force."""
    workdir, copies = "/", []
    for ins in instructions:
        if ins.keyword == "WORKDIR":
            workdir = (ins.arguments if ins.arguments.startswith("/")
                       else f"{workdir.rstrip('/')}/{ins.arguments}")
        elif ins.keyword in ("COPY", "ADD"):
            words = ins.arguments.split()
            if any(w.startswith("--from") for w in words):
                continue
            words = [w for w in words if not w.startswith("--")]
            *sources, destination = words
            if not destination.startswith("/"):
                destination = f"{workdir.rstrip('/')}/{destination}"
            copies.append((sources, destination))
    return copies


def copied_files(copies: list[tuple[list[str], str]]) -> dict[str, str]:
    """Image path -> repository path of every file the COPY instructions bring in (caches aside)."""
    files = {}
    for sources, destination in copies:
        for source in sources:
            path = REPO / source
            if path.is_dir():
                for file in sorted(path.rglob("*")):
                    if file.is_file() and "__pycache__" not in file.parts:
                        rel = file.relative_to(path).as_posix()
                        files[f"{destination.rstrip('/')}/{rel}"] = file.relative_to(REPO).as_posix()
            elif destination.endswith("/") or len(sources) > 1:
                files[f"{destination.rstrip('/')}/{path.name}"] = source
            else:
                files[destination] = source
    return files


class DockerIgnore:
    def __init__(self, text: str) -> None:
        self.rules = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = line[1:].strip() if include else line
            self.rules.append((include, _glob_regex(pattern.strip("/"))))

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (relative to the context) is left out of the build context."""
        parts = path.strip("/").split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        excluded = False
        for include, regex in self.rules:
            if any(regex.fullmatch(p) for p in prefixes):
                excluded = not include
        return excluded


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)

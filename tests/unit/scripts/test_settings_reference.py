"""docs/settings.md is what scripts/settings_reference.py generates, and the docs' links resolve."""

from __future__ import annotations

import importlib.util
import re
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "settings_reference.py"
SETTINGS_MD = ROOT / "docs" / "settings.md"


def _load_script():
    spec = importlib.util.spec_from_file_location("settings_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


settings_reference = _load_script()


# --- the committed reference is current ---------------------------------------------------------


def test_settings_md_is_generated_from_the_settings_classes():
    expected = settings_reference.render()
    current = SETTINGS_MD.read_text(encoding="utf-8") if SETTINGS_MD.exists() else ""
    assert current == expected, (
        "docs/settings.md is stale (a settings class changed, or the file was edited by hand): "
        "regenerate it with `make docs` (or `python scripts/settings_reference.py`) and commit it")


def test_every_field_of_both_classes_has_a_row():
    from feature_service.config import FeatureServiceSettings
    from gateway.config import GatewaySettings

    text = SETTINGS_MD.read_text(encoding="utf-8")
    for cls, prefix in ((GatewaySettings, "RECSYS_GATEWAY_"), (FeatureServiceSettings, "RECSYS_FEATURES_")):
        assert cls.model_config["env_prefix"] == prefix
        for name in cls.model_fields:
            assert f"| `{prefix}{name.upper()}` |" in text, name


def test_the_admin_token_shows_no_default():
    row = next(line for line in settings_reference.render().splitlines()
               if line.startswith("| `RECSYS_GATEWAY_ADMIN_TOKEN`"))
    default = re.split(r"(?<!\\)\|", row)[3]
    assert "no default" in default and "`" not in default


def test_check_exits_non_zero_when_stale_and_zero_when_current(tmp_path, capsys):
    out = tmp_path / "settings.md"
    assert settings_reference.main(["--check", "--output", str(out)]) == 1  # missing
    assert "make docs" in capsys.readouterr().err
    out.write_text("# Settings\n\nhand-written\n", encoding="utf-8")
    assert settings_reference.main(["--check", "--output", str(out)]) == 1
    assert settings_reference.main(["--output", str(out)]) == 0
    assert settings_reference.main(["--check", "--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == settings_reference.render()


# --- descriptions come from the source ----------------------------------------------------------

EXAMPLE = '''
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ExampleSettings(BaseSettings):
    """Settings of an example. Placeholders like <topic> are escaped."""

    model_config = SettingsConfigDict(env_prefix="EXAMPLE_")

    host: str = "127.0.0.1"  # where it listens
    # Several lines
    # of comment above.
    url: str = "http://x/#not-a-comment"
    plain: int = 3
    described: int = Field(default=1, ge=0, description="From the field itself.")  # not this
    documented: float = 0.5
    """An attribute docstring."""
    mode: Literal["a", "b"] = "a"
    timeout_ms: int = Field(default=86_400_000, gt=0)
    body_bytes: int = 262_144
    items: list[str] = ["x", "y"]
    maybe: str | None = None

    # Group: these belong together.
    password: SecretStr = SecretStr("hunter2")  # never printed
    flag: bool = False
'''


@pytest.fixture
def example(tmp_path, monkeypatch):
    (tmp_path / "example_settings_mod.py").write_text(textwrap.dedent(EXAMPLE), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield settings_reference.render_class("Example", "example_settings_mod:ExampleSettings")
    sys.modules.pop("example_settings_mod", None)


def _rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| `EXAMPLE_"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows[cells[0].strip("`")] = cells
    return rows


def test_descriptions_types_and_defaults_come_from_the_class_and_its_source(example):
    rows = _rows(example)
    assert list(rows) == ["EXAMPLE_HOST", "EXAMPLE_URL", "EXAMPLE_PLAIN", "EXAMPLE_DESCRIBED",
                          "EXAMPLE_DOCUMENTED", "EXAMPLE_MODE", "EXAMPLE_TIMEOUT_MS",
                          "EXAMPLE_BODY_BYTES", "EXAMPLE_ITEMS", "EXAMPLE_MAYBE", "EXAMPLE_PASSWORD",
                          "EXAMPLE_FLAG"]
    assert rows["EXAMPLE_HOST"][1:] == ["`str`", "`127.0.0.1`", "Where it listens."]
    assert rows["EXAMPLE_URL"][2:] == ["`http://x/#not-a-comment`", "Several lines of comment above."]
    assert rows["EXAMPLE_PLAIN"][3] == ""
    assert rows["EXAMPLE_DESCRIBED"][1:] == ["`int` (≥ 0)", "`1`", "From the field itself."]
    assert rows["EXAMPLE_DOCUMENTED"][3] == "An attribute docstring."
    assert rows["EXAMPLE_MODE"][1] == '`"a" \\| "b"`'
    assert rows["EXAMPLE_TIMEOUT_MS"][1:3] == ["`int` (> 0)", "`86400000` (1 day)"]
    assert rows["EXAMPLE_BODY_BYTES"][2] == "`262144` (256 KiB)"
    assert rows["EXAMPLE_ITEMS"][1:3] == ["`list[str]`", '`["x", "y"]`']
    assert rows["EXAMPLE_MAYBE"][1:3] == ["`str \\| None`", "*unset*"]
    assert rows["EXAMPLE_FLAG"][2] == "`false`"
    assert "Placeholders like &lt;topic&gt; are escaped." in example


def test_a_comment_after_an_empty_line_starts_a_group(example):
    before, _, after = example.partition("*Group: these belong together.*")
    assert "EXAMPLE_FLAG" not in before and "| variable |" in after
    assert _rows(example)["EXAMPLE_PASSWORD"][3] == "Never printed."


def test_secrets_never_show_their_default(example):
    assert "hunter2" not in example
    assert "no default" in _rows(example)["EXAMPLE_PASSWORD"][2]


# --- every relative link in the README and docs/ resolves --------------------------------------

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "model_repository" / "README.md",
        ROOT / "docker" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _without_code_blocks(markdown: str) -> str:
    return re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", markdown, flags=re.S | re.M)


def _without_code(markdown: str) -> str:
    return re.sub(r"`[^`\n]*`", "``", _without_code_blocks(markdown))


def _anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, -1 for repeats."""
    seen: dict[str, int] = {}
    anchors = set()
    for line in _without_code_blocks(path.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        text = re.sub(r"[`*]", "", match.group(1))  # code and emphasis marks are not in the id
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(path: Path) -> list[str]:
    return LINK.findall(_without_code(path.read_text(encoding="utf-8")))


def test_the_docs_exist_and_the_readme_stays_short():
    assert (ROOT / "docs" / "evaluation.md").exists()
    assert len((ROOT / "README.md").read_text(encoding="utf-8").encode()) < 10 * 1024


def _broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in _links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (doc.parent / path_part).resolve() if path_part else doc
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif not resolved.is_relative_to(root):
            broken.append(f"{target}: outside the repository")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(root)}")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc):
    broken = _broken_links(doc)
    assert not broken, f"{doc.relative_to(ROOT)}: broken links: {broken}"


def test_the_link_check_catches_missing_files_anchors_and_escapes(tmp_path):
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "a.md").write_text("# A page\n\n## Feature service — `X_*`\n", encoding="utf-8")
    doc = repo / "README.md"
    doc.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#feature-service--x_) [ok](#top) [web](https://example.com)\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#nope) [out](../elsewhere.md)\n"
        "# Top\n```\n[in code](nowhere.md)\n```\n`[in a span](nowhere.md)`\n", encoding="utf-8")
    (tmp_path / "elsewhere.md").write_text("x", encoding="utf-8")
    assert _broken_links(doc, repo) == [
        "docs/b.md: no such file",
        "docs/a.md#nope: no heading #nope in docs/a.md",
        "../elsewhere.md: outside the repository",
    ]


def test_the_link_parser_finds_links():
    links = _links(ROOT / "README.md")
    assert "docs/evaluation.md" in links and "docs/settings.md" in links


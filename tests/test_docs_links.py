"""The README stays a short front door, and every relative link of the README and docs/ lands.

A link ``[text](path#anchor)`` must name a file or folder of the repository (relative to the
Markdown file), and its ``#anchor``, when the target is Markdown, a heading of that file as
GitHub spells it (lower case, punctuation dropped, spaces to hyphens, ``-1``, ``-2`` for
repeats). Links inside code blocks and code spans are text, not links; web addresses are not
followed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^ {0,3}(```|~~~)")


def _prose_lines(text: str) -> list[str]:
    """Every line, with fenced code blocks and code spans blanked out (line numbers kept)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else re.sub(r"`+[^`]*`+", "``", line))
    return out


def github_slug(heading: str) -> str:
    """GitHub's anchor of a heading's text: links reduced to their text, lower case, every
    character but letters, digits, ``_``, ``-`` and spaces dropped, spaces turned to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in "_- ")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeats numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = github_slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(md: Path) -> list[str]:
    """``"line: target (why)"`` for each relative link of ``md`` that does not resolve."""
    bad = []
    for no, line in enumerate(_prose_lines(md.read_text(encoding="utf-8")), 1):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
                continue
            path_part, _, anchor = target.partition("#")
            dest = (md.parent / path_part).resolve() if path_part else md
            if not dest.exists():
                bad.append(f"{no}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{no}: {target} (no such heading in {dest.name})")
    return bad


DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_readme_is_a_short_front_door():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; studies go to docs/"
    counts = [ln for ln in lines if re.search(r"\b\d+ (tests|passed)\b|suite (took|time)|test time", ln, re.I)]
    assert not counts, f"README.md records test counts or suite times (CI prints them): {counts}"


@pytest.mark.parametrize("md", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(md):
    assert broken_links(md) == []


def test_the_checker_catches_a_broken_file_an_unknown_anchor_and_skips_code(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## A `code` heading: yes\n\n## Repeat\n\n## Repeat\n")
    md = tmp_path / "page.md"
    md.write_text("[ok](other.md#a-code-heading-yes) [ok2](other.md#repeat-1) [self](#here)\n"
                  "## Here\n"
                  "[gone](missing.md) [bad](other.md#nowhere) [web](https://example.com/x.md)\n"
                  "`[in code](missing.md)`\n```\n[fenced](missing.md)\n```\n")
    assert broken_links(md) == ["3: missing.md (no such file)", "3: other.md#nowhere (no such heading in other.md)"]

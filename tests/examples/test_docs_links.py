"""The README is the front door and `docs/` holds the reference: every relative link in them
resolves to a file of the repository, and every page of `docs/` is linked from the README."""

from __future__ import annotations

import re

from helpers.paths import REPO

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_relative_link_resolves_and_every_page_is_linked():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert broken == []
    linked = set(LINK.findall((REPO / "README.md").read_text(encoding="utf-8")))
    assert {f"docs/{page.name}" for page in pages[1:]} <= linked

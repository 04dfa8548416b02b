"""The documentation holds together: every relative link in README.md and docs/*.md
reaches an existing file (and heading, where it names one), and README.md stays a
short reference that opens with the two commands that work on a fresh machine."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^()\s]+)\)")


def links(text: str) -> list[str]:
    """Markdown link targets, outside code blocks and code spans."""
    return LINK.findall(CODE_SPAN.sub("", FENCE.sub("", text)))


def anchors(text: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens,
    repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", FENCE.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(doc: Path) -> list[str]:
    broken = []
    for target in links(doc.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: — not ours to check
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    assert broken_links(doc) == []


def test_the_link_check_can_fail(tmp_path):
    (tmp_path / "there.md").write_text("# A heading, with `code`\n\n## A heading, with `code`\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[ok](there.md#a-heading-with-code) [ok](there.md#a-heading-with-code-1) "
        "[gone](missing.md) [bad anchor](there.md#nope) `[in code](nowhere.md)`\n"
        "```\n[in a block](nowhere.md)\n```\n[web](https://example.org/x.md)\n"
    )
    assert [b.split(":")[0] for b in broken_links(doc)] == ["missing.md", "there.md#nope"]


def test_readme_is_a_short_reference_that_opens_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    start = lines.index("```bash")
    assert all(not line.strip() or line.startswith("#") for line in lines[:start])
    commands = [line.split("#")[0].strip() for line in lines[start + 1 : start + 3]]
    assert commands == ["make demo", "make test"]
    assert lines[start + 3] == "```"


def test_the_recipe_docs_model_md_shows_is_the_small_presets():
    """docs/model.md opens with a `train:` block; every value in it is what `small`
    trains with (its YAML over the defaults), so the page cannot go on describing a
    recipe the preset left behind."""
    import functools

    import yaml

    from jobs.bench.robustness import recipe

    block = re.search(r"^```yaml\n(train:.*?)^```", (ROOT / "docs" / "model.md").read_text(), re.M | re.S)
    assert block, "docs/model.md lost its recipe block"

    def leaves(tree: dict, prefix: str = ""):
        for key, value in tree.items():
            yield from (
                leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]
            )

    small = recipe("small", "shards", None, 0)
    wrong = {
        key: (shown, trained)
        for key, shown in leaves(yaml.safe_load(block[1])["train"])
        if (trained := functools.reduce(getattr, key.split("."), small)) != shown
    }
    assert not wrong, f"docs/model.md shows (value, small's): {wrong}"

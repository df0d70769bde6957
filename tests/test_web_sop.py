"""web.sop: SOP Markdown to HTML with nothing active surviving (hostile text from designers and users)."""
from __future__ import annotations

from html.parser import HTMLParser

import pytest

from web.sop import to_html


def test_markdown_renders_headings_lists_emphasis_tables_and_links():
    html = to_html("# Check the quote\n\n1. **Budget** line\n2. *Need*\n\n| a | b |\n|---|--:|\n| 1 | 2 |\n\n"
                   "[policy](https://intranet.example/policy?a=1&b=2)")
    assert "<h1>Check the quote</h1>" in html
    assert "<ol>" in html and "<strong>Budget</strong>" in html and "<em>Need</em>" in html
    assert "<table>" in html and '<td style="text-align:right">2</td>' in html
    assert '<a href="https://intranet.example/policy?a=1&amp;b=2" rel="noopener noreferrer nofollow">policy</a>' in html


def test_no_text_is_empty():
    assert to_html(None) == "" and to_html("") == ""


HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](java\tscript:alert(1))",
    "[x](&#106;avascript:alert(1))",
    "[x](vbscript:msgbox(1))",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![x](javascript:alert(1))",
    '<iframe src="https://evil.example"></iframe>',
    "<svg onload=alert(1)>",
    '<div style="background:url(javascript:alert(1))">x</div>',
    "[x](https://ok.example \"t\" onmouseover=alert(1))",
    "<!-- <script>alert(1)</script> -->",
    "<details open ontoggle=alert(1)>",
    "\n\n    <script>alert(1)</script>\n",
    "```html\n<script>alert(1)</script>\n```",
    "[x]: javascript:alert(1)\n\n[link][x]",
]


class Elements(HTMLParser):
    """Every element and attribute a browser would build from the HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Elements()
    parser.feed(html)
    return parser.found


@pytest.mark.parametrize("text", HOSTILE)
def test_nothing_active_survives(text: str):
    html = to_html(text)
    for tag, attrs in elements(html):
        assert tag in {"p", "a", "pre", "code", "h1", "ul", "ol", "li", "em", "strong"}, html
        assert not [a for a in attrs if a.startswith("on") or a in ("style", "src")], html
        if tag == "a":
            assert set(attrs) <= {"href", "title", "rel"}, html
            assert (attrs.get("href") or "").lower().startswith(("http:", "https:", "mailto:")), html


def test_raw_html_is_shown_as_text_not_dropped():
    assert to_html("Use <b>bold</b> sparingly") == "<p>Use &lt;b&gt;bold&lt;/b&gt; sparingly</p>\n"


def test_images_become_links_to_the_picture():
    assert to_html("![plan](https://e.example/p.png)") == (
        '<p>!<a href="https://e.example/p.png" rel="noopener noreferrer nofollow">plan</a></p>\n')

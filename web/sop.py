"""The SOP step of a task as HTML: its rendered text read as Markdown, then sanitized.

The engine renders a step's SOP text (``bpmn:documentation``, a jinja2 template filled with
the instance's variables) to plain text; that text is Markdown written by a process
designer, with values typed by other users inside it. So it is untrusted twice over.

Two layers keep it inert: markdown-it-py in CommonMark mode with raw HTML off (``<script>``
in the text comes out as the text ``&lt;script&gt;``) and its link check (no
``javascript:``, ``vbscript:``, ``file:`` or ``data:`` links); then nh3 (ammonia) keeps only
an allow-list of tags and attributes, links only to ``http``, ``https`` and ``mailto``, and
adds ``rel="noopener noreferrer nofollow"``. Images are not embedded (``![alt](url)`` becomes a
link): a picture from another server would tell it who opened the task and when.
"""
from __future__ import annotations

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

_MD = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]).disable("image")  # ![alt](url) stays a link to the picture

ALLOWED_TAGS = {
    "p", "br", "hr", "strong", "em", "s", "del", "code", "pre", "blockquote",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "a",
    "table", "thead", "tbody", "tr", "th", "td",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "th": {"style"}, "td": {"style"}}
URL_SCHEMES = {"http", "https", "mailto"}


def to_html(text: str | None) -> Markup:
    """SOP text (Markdown) as safe HTML for a page; ``Markup("")`` for no text.

    Headings, lists, emphasis, code, block quotes, tables and links survive; raw HTML is shown
    as text, and anything the allow-list does not name (scripts, event handlers, styles other
    than table alignment, images, ``javascript:`` URLs) is removed.
    """
    if not text:
        return Markup("")
    rendered = _MD.render(text)
    clean = nh3.clean(rendered, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes=URL_SCHEMES,
                      link_rel="noopener noreferrer nofollow", filter_style_properties={"text-align"},
                      strip_comments=True)
    return Markup(clean)  # noqa: S704 - sanitized by nh3 just above

"""Markdown of prompts and responses to HTML that cannot run anything.

markdown-it-py (CommonMark + tables) with raw HTML off: ``<script>``, ``<img onerror=...>`` and any
other tag in a response come out as escaped text, code blocks are escaped, and its link check refuses
``javascript:``/``vbscript:``/``file:``/``data:`` URLs. Images are not rendered (a response must not
make the annotator's browser fetch a URL; the page's Content-Security-Policy forbids it as well).
Links open with ``rel="noopener noreferrer nofollow"``.
"""

from __future__ import annotations

from functools import lru_cache

from markdown_it import MarkdownIt


@lru_cache(maxsize=1)
def _md() -> MarkdownIt:
    # breaks: a single newline is a line break (responses lay out poems, lists, addresses that way)
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False, "breaks": True})
    md.enable("table").disable("image")

    def link_open(renderer, tokens, idx, options, env):  # type: ignore[no-untyped-def]
        tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
        tokens[idx].attrSet("target", "_blank")
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


@lru_cache(maxsize=512)
def markdown_html(text: str) -> str:
    """Safe HTML for ``text`` read as Markdown (see the module docstring for what "safe" means here).
    Cached: every annotator of a pair, and every reload, shows the same texts."""
    return _md().render(text)

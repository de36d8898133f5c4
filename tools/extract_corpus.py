#!/usr/bin/env python3
"""Extract an ASCII English prose corpus from the mdBook HTML of
"The Rust Programming Language" (as installed by `rustup component add rust-docs`).

Standard library only (Python 3.11+).

Usage:
    python3 tools/extract_corpus.py [SOURCE_DIR] [OUTPUT_PATH] [--max-bytes N]

Defaults:
    SOURCE_DIR  = ~/.rustup/toolchains/1.95.0-x86_64-unknown-linux-gnu/share/doc/rust/html/book
                  if present, else $(rustc --print sysroot)/share/doc/rust/html/book
    OUTPUT_PATH = <repo>/data/corpus.txt
    --max-bytes = 1800000 (1.8 MB); the output is truncated at a paragraph boundary.

What is kept: the text of paragraphs, headings, list items and block quotes inside
the page's <main> element (inline <code>, <em>, <a>, ... are kept as plain text).
What is dropped: code blocks (<pre>), code-listing file names and captions, tables,
images, navigation, sidebars, scripts, styles, SVG icons, footnote references and
footnote definitions, and HTML comments.

Output format: one paragraph per line; a blank line between chapters (pages).
Only printable ASCII is emitted: typographic quotes/dashes/ellipses are mapped to
ASCII equivalents, accented letters are stripped to their base letter, and any
other non-ASCII character is dropped.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
import unicodedata
from html.parser import HTMLParser

DEFAULT_TOOLCHAIN_BOOK = os.path.expanduser(
    "~/.rustup/toolchains/1.95.0-x86_64-unknown-linux-gnu/share/doc/rust/html/book"
)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT = os.path.join(REPO_ROOT, "data", "corpus.txt")
DEFAULT_MAX_BYTES = 1_800_000

# Pages that are never chapters (all-in-one print page, TOC, search, 404, redirect stubs).
SKIP_PAGES = {"print.html", "toc.html", "index.html", "404.html", "search.html",
              "README.html", "SUMMARY.html"}

# Elements whose whole subtree is dropped.
SKIP_TAGS = {"pre", "script", "style", "nav", "svg", "template", "button", "noscript",
             "iframe", "form", "input", "label", "table", "img", "head", "title",
             "figcaption"}
# Elements dropped when they carry one of these classes (checked on any tag).
SKIP_CLASSES = {"file-name", "filename", "caption", "footnote-reference",
                "footnote-definition", "boring", "sidebar", "menu-bar", "nav-wrapper",
                "nav-chapters", "mobile-nav-chapters", "hidden"}
# Elements whose text is collected (a paragraph is flushed at their boundaries).
TEXT_BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "blockquote", "dt", "dd"}
# Other block-level elements: they only delimit paragraphs.
OTHER_BLOCKS = {"div", "section", "ul", "ol", "dl", "figure", "main", "article",
                "aside", "header", "footer", "hr", "br"}
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link",
             "meta", "param", "source", "track", "wbr"}

ASCII_MAP = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u00ab": '"', "\u00bb": '"',
    "\u2013": "-", "\u2014": "--", "\u2015": "--", "\u2012": "-", "\u2010": "-",
    "\u2011": "-", "\u2212": "-",
    "\u2026": "...",
    "\u00a0": " ", "\u2002": " ", "\u2003": " ", "\u2009": " ", "\u200a": " ",
    "\u202f": " ",
    "\u200b": "", "\u200c": "", "\u200d": "", "\ufeff": "", "\u00ad": "",
    "\u2192": "->", "\u2190": "<-", "\u21d2": "=>",
    "\u00d7": "x", "\u2022": "*", "\u00b7": "*",
    "\u2264": "<=", "\u2265": ">=", "\u2260": "!=",
    "\u00a9": "(c)", "\u00ae": "(R)", "\u2122": "(TM)",
}
_TRANS = str.maketrans(ASCII_MAP)


def to_ascii(text: str) -> str:
    text = text.translate(_TRANS)
    text = unicodedata.normalize("NFKD", text)
    out = []
    for ch in text:
        if ch.isascii():
            if ch.isprintable() or ch in " \t\n":
                out.append(ch)
        # everything else (combining marks, emoji, CJK, ...) is dropped
    return "".join(out)


def normalise(text: str) -> str:
    text = to_ascii(text)
    return re.sub(r"\s+", " ", text).strip()


class ProseExtractor(HTMLParser):
    """Collect prose paragraphs from inside <main>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self.stack: list[tuple[str, bool]] = []  # (tag, is_skip_root)
        self.in_main = 0
        self.skip_depth = 0
        self.text_depth = 0
        self.buf: list[str] = []
        self.sup_start: list[int] = []

    # -- helpers --------------------------------------------------------
    def flush(self) -> None:
        if self.buf:
            para = normalise("".join(self.buf))
            self.buf = []
            # drop paragraphs that are only punctuation/whitespace after cleaning
            if re.search(r"[A-Za-z0-9]", para):
                self.paragraphs.append(para)

    @staticmethod
    def _is_skip(tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        if tag in SKIP_TAGS:
            return True
        for name, value in attrs:
            if name == "class" and value:
                if SKIP_CLASSES.intersection(value.split()):
                    return True
            if name == "aria-hidden" and value == "true":
                return True
        return False

    # -- parser callbacks ----------------------------------------------
    def handle_starttag(self, tag, attrs):
        if tag == "main":
            self.in_main += 1
        if not self.in_main:
            if tag not in VOID_TAGS:
                self.stack.append((tag, False))
            return
        skip = self.skip_depth == 0 and self._is_skip(tag, attrs)
        if self.skip_depth == 0:
            if tag in TEXT_BLOCKS or tag in OTHER_BLOCKS:
                self.flush()
            if tag == "br":
                self.buf.append(" ")
        if tag in VOID_TAGS:
            return
        self.stack.append((tag, skip))
        if skip or self.skip_depth:
            self.skip_depth += 1
            return
        if tag in TEXT_BLOCKS:
            self.text_depth += 1
        if tag == "sup":
            self.sup_start.append(len(self.buf))

    def handle_startendtag(self, tag, attrs):
        # self-closing syntax (<br/>, <img .../>): treat as a void start tag
        if tag in VOID_TAGS:
            self.handle_starttag(tag, attrs)
        else:
            self.handle_starttag(tag, attrs)
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in VOID_TAGS:
            return
        # pop up to the matching open tag (tolerates unclosed <p>/<li>)
        idx = None
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                idx = i
                break
        if idx is None:
            return
        while len(self.stack) > idx:
            t, _ = self.stack.pop()
            self._close(t)

    def _close(self, tag):
        if not self.in_main:
            return
        if self.skip_depth:
            self.skip_depth -= 1
            return
        if tag == "sup" and self.sup_start:
            start = self.sup_start.pop()
            inner = "".join(self.buf[start:]).strip()
            del self.buf[start:]
            if inner:
                self.buf.append("^" + (inner if re.fullmatch(r"\w+", inner) else f"({inner})"))
        if tag in TEXT_BLOCKS:
            self.flush()
            self.text_depth -= 1
        elif tag in OTHER_BLOCKS:
            self.flush()
        if tag == "main":
            self.flush()
            self.in_main -= 1

    def handle_data(self, data):
        if self.in_main and not self.skip_depth and self.text_depth > 0:
            self.buf.append(data)

    def close(self):
        super().close()
        self.flush()


def chapter_order(src: str) -> list[str]:
    """Reading order from the book's table of contents (toc.html, else toc-*.js)."""
    hrefs: list[str] = []
    toc_html = os.path.join(src, "toc.html")
    candidates = [toc_html] if os.path.exists(toc_html) else []
    candidates += sorted(glob.glob(os.path.join(src, "toc*.js")))
    for path in candidates:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if path.endswith(".html"):
            # only the sidebar part of toc.html
            m = re.search(r'<ol class="chapter">.*</ol>', text, re.S)
            text = m.group(0) if m else ""
        hrefs = re.findall(r'href="([^"#?:]+\.html)', text)
        if hrefs:
            break
    if not hrefs:
        # fallback: mdBook file-name conventions
        names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(src, "*.html")))
        front = [n for n in ("title-page.html", "foreword.html") if n in names]
        hrefs = front + [n for n in names if re.match(r"(ch\d|appendix-)", n)]
    seen, order = set(), []
    for h in hrefs:
        name = os.path.normpath(h)
        if name in seen or os.path.basename(name) in SKIP_PAGES:
            continue
        seen.add(name)
        if os.path.exists(os.path.join(src, name)):
            order.append(name)
        else:
            print(f"warning: TOC entry {name} not found, skipped", file=sys.stderr)
    return order


def default_source() -> str:
    if os.path.isdir(DEFAULT_TOOLCHAIN_BOOK):
        return DEFAULT_TOOLCHAIN_BOOK
    try:
        sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True,
                                 text=True, check=True, timeout=30).stdout.strip()
        cand = os.path.join(sysroot, "share", "doc", "rust", "html", "book")
        if os.path.isdir(cand):
            return cand
    except (OSError, subprocess.SubprocessError):
        pass
    return DEFAULT_TOOLCHAIN_BOOK


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", nargs="?", default=None,
                    help="mdBook HTML directory (default: rust-docs book of the active toolchain)")
    ap.add_argument("output", nargs="?", default=DEFAULT_OUTPUT,
                    help=f"output text file (default: {DEFAULT_OUTPUT})")
    ap.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                    help="truncate output at a paragraph boundary to at most this many bytes")
    args = ap.parse_args(argv)
    src = args.source or default_source()
    if not os.path.isdir(src):
        print(f"error: source directory {src} not found", file=sys.stderr)
        return 1

    pages = chapter_order(src)
    chapters: list[list[str]] = []
    for name in pages:
        with open(os.path.join(src, name), encoding="utf-8") as f:
            parser = ProseExtractor()
            parser.feed(f.read())
            parser.close()
        if parser.paragraphs:
            chapters.append(parser.paragraphs)

    # assemble, truncating at a paragraph boundary
    out_lines: list[str] = []
    size = 0
    n_paras = 0
    truncated = False
    for ci, paras in enumerate(chapters):
        for pi, para in enumerate(paras):
            sep = "\n" if (ci > 0 and pi == 0) else ""  # blank line between chapters
            piece = sep + para + "\n"
            if size + len(piece) > args.max_bytes:
                truncated = True
                break
            out_lines.append(piece)
            size += len(piece)
            n_paras += 1
        if truncated:
            break

    text = "".join(out_lines)
    assert text.isascii()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="ascii", newline="\n") as f:
        f.write(text)

    total_paras = sum(len(p) for p in chapters)
    print(f"source: {src}")
    print(f"pages in TOC order: {len(pages)} (with prose: {len(chapters)})")
    print(f"paragraphs: {n_paras} written of {total_paras} extracted")
    print(f"bytes: {len(text.encode('ascii'))} -> {args.output}"
          + (" (truncated at paragraph boundary)" if truncated else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

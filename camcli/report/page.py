"""What every report page shares: text and URL escaping, the data island, the page frame.

A page is one self-contained HTML file: its style and script are inline, it loads nothing
from the network, and every link is a path relative to the page, URL-quoted, so the page
works from a ``file://`` URL and from a CI artifact folder alike.
"""

from __future__ import annotations

import html
import os
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from camcli.machine_output import json_text


def text(value: object) -> str:
    """``value`` as displayable text: bytes of a file name that are not UTF-8 (kept by Python
    as lone surrogates) become U+FFFD, which any page can encode."""
    return os.fsencode(str(value)).decode("utf-8", "replace")


def esc(value: object) -> str:
    """``value`` as HTML text or attribute value: ``<``, ``>``, ``&`` and quotes escaped."""
    return html.escape(text(value), quote=True)


def url(relative: str | PurePosixPath) -> str:
    """A relative POSIX path as a URL: every byte but letters, digits, ``/`` and ``-._~``
    percent-quoted (a ``:`` too, so that no file name can read as a scheme such as
    ``javascript:``); bytes of non-UTF-8 names are quoted as they are on disk."""
    return quote(os.fsencode(str(relative)), safe="/")


def link_from(page_dir: Path, target: Path) -> str:
    """The URL of ``target`` relative to the folder that holds the page."""
    relative = os.path.relpath(os.path.realpath(target), os.path.realpath(page_dir))
    return url(PurePosixPath(*Path(relative).parts))


def data_island(element_id: str, data: Any) -> str:
    """``data`` as JSON inside ``<script type="application/json">``, read by the page's script.

    ``<``, ``>`` and ``&`` are written as ``\\u003c``... so that no string (a file name such as
    ``</script>.jpg``) can end the element; JSON.parse reads them back unchanged.
    """
    body = json_text(data)
    body = body.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{esc(element_id)}">{body}</script>'


def asset(name: str) -> str:
    """A file shipped in this package (the style sheet, the run page's script)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def page(title: str, body: str, script: str = "") -> str:
    """The whole HTML document: ``title`` is escaped here; ``body`` is HTML built with ``esc``."""
    tail = f"<script>\n{script}</script>\n" if script else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # No request leaves the page, whatever a file name holds.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src 'self' file: data:; media-src 'self' file:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n"
        f"<title>{esc(title)}</title>\n<style>\n{asset('report.css')}</style>\n</head>\n"
        f"<body>\n{body}\n{tail}</body>\n</html>\n"
    )

"""Standalone HTML documents the jobs write (report.html, the demo page): Jinja2 templates with
autoescaping (a file name or an error message is always text, never markup), styled by the station's
stylesheet (``station.css`` here, the one the station serves), inlined so that a document copied
elsewhere keeps its looks."""

from __future__ import annotations

import functools
from importlib.resources import files

import jinja2

HERE = files(__name__)


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals["stylesheet"] = stylesheet()
    return env


def stylesheet() -> str:
    """The text of the one stylesheet."""
    return (HERE / "station.css").read_text(encoding="utf-8")


def render(template: str, **context) -> str:
    """The document ``template`` (a file in this folder) filled with ``context``."""
    return _environment().get_template(template).render(**context)

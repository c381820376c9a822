"""The README is valid reStructuredText: a malformed table or a broken
literal block is an error here, not a surprise on the project's page."""

from __future__ import annotations

import io
from pathlib import Path

import docutils.core

README = Path(__file__).resolve().parent.parent / "README.rst"


def test_the_readme_renders_without_a_warning() -> None:
    problems = io.StringIO()
    docutils.core.publish_doctree(README.read_text(encoding="utf-8"), source_path=str(README),
                                  settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": problems})
    assert problems.getvalue() == ""

"""Helpers for browser tests (fixtures are in conftest.py)."""
from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Locator, Page

SCREENSHOTS = Path(__file__).resolve().parent.parent.parent / "docs" / "screenshots"


def screenshot(target: Page | Locator, name: str, *, full_page: bool = False) -> Path:
    """Save what a page (or one element of it) shows as ``docs/screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    if isinstance(target, Page):
        target.screenshot(path=str(path), full_page=full_page)
    else:
        target.screenshot(path=str(path))
    return path


def has_class(name: str) -> re.Pattern[str]:
    """For ``expect(locator).to_have_class(...)``: the class list contains ``name``."""
    return re.compile(rf"(^|\s){re.escape(name)}(\s|$)")

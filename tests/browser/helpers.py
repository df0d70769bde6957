"""Helpers for browser tests (fixtures are in conftest.py)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from playwright.sync_api import Locator, Page, expect

if TYPE_CHECKING:
    from tests.browser.conftest import LiveServer

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


def signed_in(page: Page, server: LiveServer, user: str, *, next_path: str = "") -> Page:
    """``page`` signed in as demo ``user`` through the login form, as a person does it.

    Lands where the sign-in redirects (``next_path`` if given, else the user's home).
    """
    page.goto(f"/login?next={next_path}" if next_path else "/login")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(server.passwords[user])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    return page

"""The admin UI in a real browser: Debian's Chromium driven by Playwright, against the real
application served by gunicorn (:mod:`tests.live`) with admin users of every role.

One browser per test worker (:func:`chromium`), one server per backend per module (:func:`site`).
A browser that cannot start fails the tests, saying how to install one; it never skips them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.live import ROOT, LiveServer, fresh_database, live_server, run_cli

CHROMIUM = Path(os.environ.get("LOYALTY_TEST_CHROMIUM", "/usr/bin/chromium"))
INSTALL = (
    "install Debian's chromium (apt-get install -y chromium) or point LOYALTY_TEST_CHROMIUM at a Chromium"
    " binary; Playwright drives it by its path, no browser download is needed"
)
#: where every run leaves its screenshots (git-ignored)
ARTEFACTS = ROOT / "test-artefacts" / "admin"
DESKTOP = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}

#: the admin users of the test site and their roles
USERS = {
    "admin": "catalogue,rules,finance,support,auditor,admin",
    "cat": "catalogue",
    "rul": "rules",
    "fin": "finance",
    "sup": "support",
    "sup2": "support",
    "aud": "auditor",
    "locked": "auditor",
}


@dataclass
class Site:
    backend: str
    server: LiveServer
    passwords: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A request to the JSON API with the server's key of every scope."""
        headers = {"Authorization": f"Bearer {self.server.key}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)


def chromium() -> Iterator[Any]:
    """The session's browser (a generator for a session fixture)."""
    if not CHROMIUM.exists():
        pytest.fail(f"no browser at {CHROMIUM}: {INSTALL}", pytrace=False)
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
            )
        except Error as exc:
            pytest.fail(
                f"Chromium at {CHROMIUM} did not start ({exc.message.splitlines()[0]}): {INSTALL}", pytrace=False
            )
        yield browser
        browser.close()


def site(backend: str, directory: Path) -> Iterator[Site]:
    """A fresh database and the application serving it, with the users of :data:`USERS` (English)."""
    with fresh_database(backend, directory) as url, live_server(url, directory) as server:
        env = {**os.environ, "LOYALTY_DATABASE_URL": url}
        passwords = {}
        for name, roles in USERS.items():
            out = run_cli(env, "admin-users", "create", name, "--roles", roles, "--locale", "en")
            passwords[name] = out.strip().splitlines()[-1]
        yield Site(backend, server, passwords)


def sign_in(page: Any, site: Site, user: str, password: str | None = None, *, here: bool = False) -> None:
    """Sign in on the sign-in page (``here``: the one the browser is on, which knows where to go next)."""
    if not here:
        page.goto(f"{site.url}/admin/sign-in")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password if password is not None else site.passwords[user])
    page.click("#sign-in")


def csrf_token(page: Any) -> str:
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token, "the page has no CSRF token"
    return str(token)


def error_beside(page: Any, field: str) -> str:
    """The error shown in the label of the form field ``field``."""
    label = page.locator(f"label.field:has([name='{field}'])")
    return str(label.locator(".error").inner_text())


def shoot(page: Any, backend: str, name: str) -> Path:
    size = page.viewport_size
    lang = page.locator("html").get_attribute("lang")
    path = ARTEFACTS / backend / f"{name}-{lang}-{size['width']}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    return path


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")

"""The documentation site builds strictly (a broken link, a missing page or anchor fails it), so
`make test` catches what `make docs` would; and its diagrams render offline, from the vendored
mermaid, without an error."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.live import BIN, ROOT, tool
from tests.test_api_reference import chromium


def build(config: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("mkdocs"), "build", "--strict", "--config-file", str(config), "--site-dir", str(out)],
        cwd=config.parent,
        env={"PATH": f"{BIN}:/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = build(ROOT / "mkdocs.yml", out)
    assert done.returncode == 0, done.stderr
    return out


def test_the_site_builds_strictly_with_every_section(site: Path) -> None:
    for page in ("tutorial", "how-to/close-month", "reference/problems", "explanation/ledger", "zh/tutorial"):
        assert (site / page / "index.html").exists(), page
    # The command line reference is generated from the click commands.
    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "import-transactions" in cli and "--chunk-size" in cli


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "how-to" / "close-month.md"
    page.write_text(page.read_text(encoding="utf-8") + "\nSee [the ledger](../explanation/ledger.md#no-such-part).\n")
    done = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "no-such-part" in done.stderr


def test_the_diagrams_render_offline_without_an_error(site: Path, tmp_path: Path) -> None:
    pages = [p for p in site.rglob("index.html") if 'class="mermaid"' in p.read_text(encoding="utf-8")]
    assert len(pages) >= 2
    for page in pages:
        assert "unpkg" not in page.read_text(encoding="utf-8")
        done = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={tmp_path / 'profile'}",
                # No host resolves: a diagram that needed the network would fail, and say so.
                "--host-resolver-rules=MAP * ~NOTFOUND",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=15000",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
        assert console == [], f"{page}: {console}"
        # mermaid draws a diagram it cannot parse as an error picture in the page itself.
        assert 'aria-roledescription="error"' not in done.stdout, page

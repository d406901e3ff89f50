"""The service serves its own reference without a key: the contract as it is in the repository, as
YAML and JSON, and a rendered reference at /docs that a real browser renders under its policy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from loyalty.api.reference import ASSETS, CONTENT_SECURITY_POLICY
from tests.contract import SPEC_PATH, ContractClient, load_yaml
from tests.live import LiveServer


@pytest.fixture
def anonymous(bare_app) -> ContractClient:  # type: ignore[no-untyped-def]
    """A client without a key, every answer checked against openapi.yaml."""
    return ContractClient(bare_app.test_client(), None)


def test_the_served_yaml_is_the_file_in_the_repository(anonymous: ContractClient) -> None:
    response = anonymous.get("/openapi.yaml")
    assert response.status_code == 200
    assert response.mimetype == "application/yaml"
    assert response.data == SPEC_PATH.read_bytes()
    assert response.headers["Cache-Control"] == "no-cache"


def test_the_served_json_says_what_the_yaml_says_read_as_yaml_1_2(anonymous: ContractClient) -> None:
    response = anonymous.get("/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == load_yaml(SPEC_PATH.read_text(encoding="utf-8"))


def test_the_reference_is_in_the_contract_without_security() -> None:
    paths = load_yaml(SPEC_PATH.read_text(encoding="utf-8"))["paths"]
    for path in ("/openapi.yaml", "/openapi.json", "/docs", "/docs/assets/{asset}"):
        assert paths[path]["get"]["security"] == [], path
    assert paths["/docs/assets/{asset}"]["get"]["parameters"][0]["schema"]["enum"] == list(ASSETS)


def test_the_page_loads_only_the_services_own_files_under_a_strict_policy(anonymous: ContractClient) -> None:
    response = anonymous.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    policy = response.headers["Content-Security-Policy"]
    assert policy == CONTENT_SECURITY_POLICY
    assert "unsafe" not in policy and "http" not in policy and "*" not in policy
    page = response.get_data(as_text=True)
    assert "http://" not in page and "https://" not in page and "<script>" not in page
    for asset, (path, mimetype) in ASSETS.items():
        assert f'/docs/assets/{asset}"' in page
        served = anonymous.get(f"/docs/assets/{asset}")
        assert served.status_code == 200 and served.mimetype == mimetype
        assert served.data == path.read_bytes()


def test_nothing_else_is_served_from_the_assets(anonymous: ContractClient) -> None:
    for name in ("README.md", "LICENSE", "..%2Freference.py", "docs.html"):
        response = anonymous.get(f"/docs/assets/{name}")
        assert response.status_code == 404
        assert response.get_json()["type"] == "/problems/not_found"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "a real browser is needed to render /docs: install Debian's chromium (apt-get install chromium)"
    return found


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_browser_renders_every_operation_and_the_policy_blocks_nothing(live: LiveServer, tmp_path: Path) -> None:
    assert requests.get(f"{live.url}/docs", timeout=10).status_code == 200
    done = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=20000",
            "--dump-dom",
            f"{live.url}/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    dom, log = done.stdout, done.stderr
    assert done.returncode == 0, log[-3000:]
    # Swagger UI rendered the contract: a block per operation, the reference's own included.
    paths = load_yaml(SPEC_PATH.read_text(encoding="utf-8"))["paths"]
    operations = sum(1 for ops in paths.values() for method in ops if method != "parameters")
    assert dom.count('class="opblock-summary-path"') == operations, dom[-2000:]
    assert "Enrol a member" in dom and "getOpenApiJson" in dom
    # The browser logs each thing the policy blocked as a console message: there must be none.
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if "Content Security Policy" in line], console

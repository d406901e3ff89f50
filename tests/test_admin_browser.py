"""The admin UI as people use it: Playwright clicks, fills and reads pages in a real Chromium,
against the application served by gunicorn on SQLite and on PostgreSQL (:mod:`tests.browser`).

Every test of this module runs on one worker (one browser, one server per backend)."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import openpyxl
import pytest
import requests
from playwright.sync_api import expect

from tests import browser as b

pytestmark = pytest.mark.xdist_group("admin-browser")


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    yield from b.chromium()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[b.Site]:
    yield from b.site(str(request.param), tmp_path_factory.mktemp(f"admin-{request.param}"))


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport=b.DESKTOP, locale="en-GB", accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def enrol_with_points(site: b.Site, member_id: str, spend_fen: int = 500_000) -> None:
    """A member enrolled through the API, with the welcome bonus and a card purchase's points."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    r = site.api(
        "POST", "/v1/members", json={"member_id": member_id, "enrolled_at": (now - dt.timedelta(days=2)).isoformat()}
    )
    assert r.status_code == 201, r.text
    r = site.api(
        "POST",
        "/v1/transactions",
        json={
            "transaction_id": unique("t"),
            "member_id": member_id,
            "type": "card_purchase",
            "amount": spend_fen,
            "currency": "CNY",
            "occurred_at": (now - dt.timedelta(hours=1)).isoformat(),
            "channel": "app",
        },
    )
    assert r.status_code in (200, 201), r.text


# --- journeys --------------------------------------------------------------------------------------------


def test_sign_in_leads_to_the_dashboard_and_sign_out_back(site: b.Site, page: Any) -> None:
    page.goto(f"{site.url}/admin/catalogue")
    assert "/admin/sign-in" in page.url
    b.sign_in(page, site, "admin", here=True)
    page.wait_for_url("**/admin/catalogue")
    page.goto(f"{site.url}/admin/")
    assert page.locator("h1").inner_text() == "Dashboard"
    assert page.locator("#kpi-outstanding").inner_text() != ""
    headers = page.request.get(f"{site.url}/admin/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "'unsafe-inline'" not in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    csv = page.request.get(f"{site.url}/admin/?table=usage-by-tier&format=csv")
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text().splitlines()[0] == "Tier,Members,Redeemed,Usage rate"
    cookie = next(c for c in page.context.cookies() if c["name"] == "loyalty_admin")
    assert cookie["httpOnly"]
    page.click("#sign-out")
    page.wait_for_url("**/admin/sign-in")
    page.goto(f"{site.url}/admin/")
    assert "/admin/sign-in" in page.url
    audit = site.api("GET", "/v1/audit", params={"object_type": "admin_user", "object_id": "admin"}).json()
    actions = [line["action"] for line in audit["entries"]]
    assert "admin.sign_in" in actions and "admin.sign_out" in actions


def test_a_benefit_made_in_the_ui_is_offered_redeemed_through_the_api_and_seen_on_the_member_page(
    site: b.Site, page: Any
) -> None:
    code = unique("gift")
    b.sign_in(page, site, "cat")
    page.goto(f"{site.url}/admin/catalogue/new")
    page.fill("#f-code", code)
    page.fill("#f-name", "Supermarket card 50")
    page.select_option("#f-kind", "voucher")
    page.select_option("#f-fulfilment", "pool")
    page.fill("#f-face_value", "50")
    page.fill("#f-unit_cost", "45.50")
    page.fill("#f-points_price", "5000")
    page.fill("#f-tier_prices-basic", "4000")
    page.fill("#f-entitlements-hnw-quota", "1")
    page.select_option("#f-entitlements-hnw-period", "month")
    page.click("#save-benefit")
    page.wait_for_url(f"**/admin/catalogue/{code}")
    assert page.locator("#benefit-status").inner_text() == "draft"

    lines = "code\n" + "\n".join(f"CODE-{code}-{i:03d}" for i in range(5)) + f"\nCODE-{code}-000\n"
    page.set_input_files("input[name=codes]", {"name": "codes.csv", "mimeType": "text/csv", "buffer": lines.encode()})
    page.click("#upload-codes")
    summary = page.locator("#upload-summary").inner_text()
    assert "Added 5" in summary and "duplicates 1" in summary
    page.click("#status-active")
    page.wait_for_url(f"**/admin/catalogue/{code}")
    assert page.locator("#benefit-status").inner_text() == "active"
    page.goto(f"{site.url}/admin/catalogue/{code}?a=1&b=3")
    assert '"status": "active"' in page.locator("#diff").inner_text()

    member = unique("m")
    enrol_with_points(site, member)
    offers = site.api("GET", f"/v1/members/{member}/benefits").json()["benefits"]
    offer = next(o for o in offers if o["code"] == code)
    assert offer["price"] == 4000  # the basic tier's price
    r = site.api(
        "POST",
        "/v1/redemptions",
        json={"redemption_id": unique("r"), "member_id": member, "benefit_code": code},
        headers={"Idempotency-Key": unique("k")},
    )
    assert r.status_code == 201, r.text
    redemption = r.json()["redemption_id"]

    page.click("#sign-out")
    b.sign_in(page, site, "sup")
    page.goto(f"{site.url}/admin/members?member_id={member}")
    row = page.locator(f"#redemptions tr[data-redemption='{redemption}']")
    assert "Supermarket card 50" in row.inner_text()
    assert "4,000" in row.inner_text()
    available = site.api("GET", f"/v1/members/{member}").json()["available"]
    assert page.locator("#available").inner_text() == f"{available:,}"  # with the thousands separator

    # the analytics page counts the redemption in the member's tier, and its drill-down names it
    page.click("#sign-out")
    b.sign_in(page, site, "cat")
    page.wait_for_url("**/admin/")
    page.goto(f"{site.url}/admin/analytics?tier=basic")
    usage = page.locator(f"#usage tr[data-tier='basic'][data-benefit='{code}']")
    assert int(usage.locator("td.redemptions").inner_text().replace(",", "")) >= 1
    assert usage.locator("td.usage-rate").inner_text() != "–"
    usage.locator("td.redemptions a").click()
    page.wait_for_url("**/admin/analytics/explain**")
    assert redemption in page.locator("#ids").inner_text()
    csv = page.request.get(f"{site.url}/admin/analytics?tier=basic&format=csv").text().splitlines()
    assert csv[0].startswith("period,tier,benefit_code,members")
    assert any(f",basic,{code}," in line for line in csv)


def test_a_finding_of_the_tuning_advice_is_accepted_with_a_note_and_audited(site: b.Site, page: Any) -> None:
    for _member in range(3):  # basic members who earn and never burn: the tier hoards
        enrol_with_points(site, unique("m"), spend_fen=2_000_000)
    b.sign_in(page, site, "cat")
    page.wait_for_url("**/admin/")
    page.goto(f"{site.url}/admin/analytics")
    finding = page.locator(".finding").first
    finding_id = finding.get_attribute("data-finding")
    assert finding_id
    finding.locator("input[name=note]").fill("")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        finding.locator("button[value=accepted]").click()
    assert answer.value.status == 422  # no note: refused beside the field
    finding = page.locator(f".finding[data-finding='{finding_id}']")
    assert "1 to 1000 characters" in finding.locator("label.field .error").inner_text()
    finding.locator("input[name=note]").fill("raise the redemption reminder")
    finding.locator("button[value=accepted]").click()
    page.wait_for_url("**/admin/analytics**")
    decision = page.locator(f".finding[data-finding='{finding_id}'] .decision").inner_text()
    assert "accepted" in decision and "raise the redemption reminder" in decision
    lines = site.api("GET", "/v1/audit", params={"object_type": "advice_finding", "object_id": finding_id}).json()
    assert [(line["action"], line["actor"]) for line in lines["entries"]] == [("advice.decide", "admin:cat")]


def test_a_manual_adjustment_needs_a_second_person_and_posts_once(site: b.Site, page: Any) -> None:
    member = unique("m")
    enrol_with_points(site, member)
    before = site.api("GET", f"/v1/members/{member}").json()["balance"]
    # admin holds support and finance: it may ask, and may approve others' requests, never its own
    b.sign_in(page, site, "admin")
    page.wait_for_url("**/admin/")
    page.goto(f"{site.url}/admin/members/{member}")
    page.fill("#f-adjustment-points", "twelve")
    page.fill("#f-adjustment-reason", "goodwill after a failed card payment")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("#request-adjustment")
    assert answer.value.status == 422
    assert "non-zero integer" in b.error_beside(page, "adjustment.points")
    assert page.locator("#f-adjustment-reason").input_value() == "goodwill after a failed card payment"  # kept
    page.fill("#f-adjustment-points", "1200")
    page.click("#request-adjustment")
    page.wait_for_url(f"**/admin/members/{member}")
    row = page.locator("#adjustments tbody tr").first
    assert "requested" in row.inner_text() and "1,200" in row.inner_text()
    adjustment = row.get_attribute("data-adjustment")
    assert page.locator("#balance").inner_text() == f"{before:,}"  # nothing posted yet

    page.goto(f"{site.url}/admin/adjustments")
    pending = page.locator(f"#pending tr[data-adjustment='{adjustment}']")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        pending.locator("button.approve").click()
    assert answer.value.status == 403  # four eyes: the one who asked cannot approve
    pending = page.locator(f"#pending tr[data-adjustment='{adjustment}']")
    assert "another person must approve or reject it" in pending.locator(".error").inner_text()
    assert site.api("GET", f"/v1/members/{member}").json()["balance"] == before

    # a support-only user cannot decide at all: the server refuses a forged post
    page.context.clear_cookies()
    b.sign_in(page, site, "sup")
    page.wait_for_url("**/admin/")
    response = page.request.post(
        f"{site.url}/admin/adjustments/{adjustment}/approve",
        form={"csrf_token": b.csrf_token(page)},
        max_redirects=0,
    )
    assert response.status == 403

    page.context.clear_cookies()
    b.sign_in(page, site, "fin")
    page.wait_for_url("**/admin/")
    page.goto(f"{site.url}/admin/adjustments")
    pending = page.locator(f"#pending tr[data-adjustment='{adjustment}']")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        pending.locator("button.reject").click()  # a rejection must say why
    assert answer.value.status == 422
    pending = page.locator(f"#pending tr[data-adjustment='{adjustment}']")
    assert "must say why" in pending.locator("label.field .error").inner_text()
    pending.locator("input[name=note]").fill("checked against the card ledger")
    pending.locator("button.approve").click()
    page.wait_for_url("**/admin/adjustments")
    assert page.locator(f"#pending tr[data-adjustment='{adjustment}']").count() == 0
    assert "approved" in page.locator(f"#decided tr[data-adjustment='{adjustment}']").inner_text()
    # approving again (a stale page, a double click) changes nothing more
    again = page.request.post(
        f"{site.url}/admin/adjustments/{adjustment}/approve", form={"csrf_token": b.csrf_token(page)}, max_redirects=0
    )
    assert again.status == 409
    assert site.api("GET", f"/v1/members/{member}").json()["balance"] == before + 1200  # once

    lines = site.api("GET", "/v1/audit", params={"object_type": "adjustment", "object_id": adjustment}).json()
    steps = sorted((line["action"], line["actor"]) for line in lines["entries"])
    assert steps == [("adjustment.approved", "fin"), ("adjustment.requested", "admin")]


def bank_time(days: int) -> str:
    """A ``datetime-local`` value ``days`` from now in the bank's time (UTC+8)."""
    when = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    return when.astimezone(dt.timezone(dt.timedelta(hours=8))).strftime("%Y-%m-%dT%H:%M")


def test_a_tier_override_asked_for_by_support_needs_a_second_person_and_applies_once(site: b.Site, page: Any) -> None:
    member = unique("m")
    enrol_with_points(site, member)
    before = site.api("GET", f"/v1/members/{member}").json()["tier"]
    assert (before["code"], before["override"]) == ("basic", None)
    b.sign_in(page, site, "sup")
    page.wait_for_url("**/admin/")
    page.goto(f"{site.url}/admin/members/{member}")
    assert page.locator("#save-override").count() == 0  # support asks; only an administrator sets at once
    page.select_option("#f-tier", "hnw")
    page.fill("#f-until", bank_time(90))
    page.fill("#f-reason", "private banking referral")
    page.click("#request-override")
    page.wait_for_url(f"**/admin/members/{member}")
    row = page.locator("#override-requests tbody tr").first
    assert "pending" in row.inner_text() and "hnw" in row.inner_text()
    request_id = row.get_attribute("data-override-request")
    assert request_id
    assert page.locator("#tier").inner_text() == "basic"  # nothing set yet
    assert site.api("GET", f"/v1/members/{member}").json()["tier"]["override"] is None
    # nor may support set it at once by a forged post
    forged = page.request.post(
        f"{site.url}/admin/members/{member}/tier-override",
        form={"csrf_token": b.csrf_token(page), "tier": "hnw", "until": bank_time(90), "reason": "x"},
        max_redirects=0,
    )
    assert forged.status == 403

    page.goto(f"{site.url}/admin/tier-overrides")
    pending = page.locator(f"#pending tr[data-override-request='{request_id}']")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        pending.locator("button.approve").click()
    assert answer.value.status == 403  # four eyes: the one who asked cannot approve
    pending = page.locator(f"#pending tr[data-override-request='{request_id}']")
    assert "another person must approve or reject it" in pending.locator(".error").inner_text()
    assert site.api("GET", f"/v1/members/{member}").json()["tier"]["code"] == "basic"

    # roles without the page cannot decide at all: the server refuses a forged post
    for user in ("fin", "aud"):
        page.context.clear_cookies()
        b.sign_in(page, site, user)
        page.wait_for_url("**/admin/")
        response = page.request.post(
            f"{site.url}/admin/tier-overrides/{request_id}/approve",
            form={"csrf_token": b.csrf_token(page)},
            max_redirects=0,
        )
        assert response.status == 403, user

    page.context.clear_cookies()
    b.sign_in(page, site, "sup2")
    page.wait_for_url("**/admin/")
    page.goto(f"{site.url}/admin/tier-overrides")
    pending = page.locator(f"#pending tr[data-override-request='{request_id}']")
    pending.locator("input[name=note]").fill("referral confirmed by the branch")
    pending.locator("button.approve").click()
    page.wait_for_url("**/admin/tier-overrides")
    assert page.locator(f"#pending tr[data-override-request='{request_id}']").count() == 0
    decided = page.locator(f"#decided tr[data-override-request='{request_id}']").inner_text()
    assert "approved" in decided and "sup2" in decided
    again = page.request.post(  # a stale page, a double click: nothing more happens
        f"{site.url}/admin/tier-overrides/{request_id}/approve",
        form={"csrf_token": b.csrf_token(page)},
        max_redirects=0,
    )
    assert again.status == 409

    tier = site.api("GET", f"/v1/members/{member}").json()["tier"]
    assert (tier["code"], tier["override"]["tier"], tier["override"]["reason"]) == (
        "hnw",
        "hnw",
        "private banking referral",
    )
    history = site.api("GET", f"/v1/members/{member}/history").json()["tiers"]
    assert [(c["from"], c["to"], c["source"]) for c in history if c["source"] == "override"] == [
        ("basic", "hnw", "override")
    ]  # once
    page.goto(f"{site.url}/admin/members/{member}")
    assert page.locator("#tier").inner_text() == "hnw"
    lines = site.api(
        "GET", "/v1/audit", params={"object_type": "tier_override_request", "object_id": request_id}
    ).json()
    steps = sorted((line["action"], line["actor"]) for line in lines["entries"])
    assert steps == [("tier_override_request.approved", "sup2"), ("tier_override_request.requested", "sup")]
    overrides = site.api("GET", "/v1/audit", params={"object_type": "member", "object_id": member}).json()
    assert [(line["action"], line["actor"]) for line in overrides["entries"]] == [("tier.override", "sup2")]


def test_a_rule_change_is_drafted_simulated_and_published(site: b.Site, page: Any) -> None:
    b.sign_in(page, site, "rul")
    page.goto(f"{site.url}/admin/rules")
    area = page.locator("#new-draft textarea")
    document = json.loads(area.input_value())
    version = unique("v")[:20]
    document["version"] = version
    check = page.locator("#new-draft .check")
    area.fill("{ not json")
    expect(check).to_contain_text("document: is not JSON")
    area.fill(json.dumps({**document, "rules": [{"id": "x"}]}))
    expect(check).to_have_text("$.rules[0].event: is required")  # the fault named by its JSON path
    area.fill(json.dumps(document, ensure_ascii=False))
    expect(check).to_have_text(re.compile(f"^✓ {version}"))
    page.click("#create-draft")
    page.wait_for_url(f"**/admin/rules/{version}")
    assert page.locator("#programme-status").inner_text() == "draft"

    page.fill("input[name=amount]", "100000")
    page.click("#simulate")
    assert "points under" in page.locator("#simulated-points").inner_text()
    assert page.locator("#trace tbody tr").count() >= 1
    page.click("#backtest")
    assert "transactions" in page.locator("#backtest-summary").inner_text()

    when = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).astimezone(dt.timezone(dt.timedelta(hours=8)))
    page.fill("#f-effective_from", when.strftime("%Y-%m-%dT%H:%M"))
    page.click("#publish")
    page.wait_for_url(f"**/admin/rules/{version}")
    assert page.locator("#programme-status").inner_text() == "published"
    assert site.api("GET", f"/v1/programmes/{version}").json()["status"] == "published"


def test_finance_closes_a_month_and_the_roll_forward_xlsx_matches_the_api(site: b.Site, page: Any) -> None:
    enrol_with_points(site, unique("m"))
    b.sign_in(page, site, "fin")
    page.goto(f"{site.url}/admin/finance/periods")
    month = page.locator("#f-period").input_value()
    page.click("#close-month")
    page.wait_for_url("**/admin/finance/periods")
    assert page.locator(f"#closed tr[data-period='{month}']").count() == 1
    assert month in [p["period"] for p in site.api("GET", "/v1/finance/periods").json()["closed"]]

    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
    start, end = today.replace(day=1).isoformat(), today.isoformat()
    page.goto(f"{site.url}/admin/finance?report=rollforward&from={start}&to={end}")
    with page.expect_download() as download:
        page.click(".downloads a:text('XLSX')")
    book = openpyxl.load_workbook(io.BytesIO(download.value.path().read_bytes()))
    rows = {row[0].value: row[2].value for row in book.active.iter_rows(min_row=2) if not row[1].value}
    api = site.api("GET", "/v1/finance/rollforward", params={"from": start, "to": end}).json()
    assert api["earned"]["total"] > 0
    assert rows["opening"] == api["opening"]
    assert rows["earned"] == api["earned"]["total"]
    assert rows["redeemed"] == api["redeemed"]["total"]
    assert rows["closing"] == api["closing"]


def test_an_api_key_made_in_the_ui_works_once_shown_and_stops_when_revoked(site: b.Site, page: Any) -> None:
    b.sign_in(page, site, "admin")
    page.goto(f"{site.url}/admin/operations/api-keys")
    page.fill("#f-name", "branch-system")
    page.check("input[name=scopes][value=read]")
    page.click("#key-form button[type=submit]")
    key = page.locator("#new-key").inner_text()
    headers = {"Authorization": f"Bearer {key}"}
    assert requests.get(f"{site.url}/v1/rules/catalogue", headers=headers, timeout=30).status_code == 200
    page.goto(f"{site.url}/admin/operations/api-keys")
    assert key not in page.content()  # shown once
    key_id = key.split("_")[1]
    page.click(f"#keys tr[data-key='{key_id}'] button")
    page.wait_for_url("**/admin/operations/api-keys")
    assert requests.get(f"{site.url}/v1/rules/catalogue", headers=headers, timeout=30).status_code == 401

    page.goto(f"{site.url}/admin/operations")
    page.select_option("#f-job", "lifecycle")
    page.click("#run-job button[type=submit]")
    page.wait_for_url("**/admin/operations")
    assert "lifecycle" in page.locator("#runs tbody tr").first.inner_text()


# --- refusals --------------------------------------------------------------------------------------------

#: (user, a page their roles do not open)
FORBIDDEN_PAGES = [
    ("cat", "/admin/finance"),
    ("cat", "/admin/rules"),
    ("rul", "/admin/catalogue"),
    ("fin", "/admin/members"),
    ("sup", "/admin/operations/users"),
    ("fin", "/admin/operations"),
    ("rul", "/admin/operations/audit"),
    ("sup", "/admin/adjustments"),
    ("fin", "/admin/tier-overrides"),
    ("cat", "/admin/tier-overrides"),
    ("rul", "/admin/analytics"),
    ("sup", "/admin/analytics"),
]


def test_each_role_is_refused_pages_of_other_roles_by_direct_url(site: b.Site, page: Any) -> None:
    for user, path in FORBIDDEN_PAGES:
        b.sign_in(page, site, user)
        page.wait_for_url("**/admin/")
        response = page.goto(f"{site.url}{path}")
        assert response.status == 403, (user, path, response.status)
        assert "Your roles do not allow this." in page.locator(".message").inner_text()
        page.context.clear_cookies()
    b.sign_in(page, site, "aud")  # the auditor reads every page
    page.wait_for_url("**/admin/")
    for path in PAGES:
        assert page.goto(f"{site.url}{path}").status == 200, path
    page.goto(f"{site.url}/admin/catalogue")
    assert page.locator("#benefits tbody tr").count() > 0
    assert page.locator("#new-benefit").count() == 0  # no button for what the server would refuse anyway


def test_forged_posts_are_refused_by_role_and_change_nothing(site: b.Site, page: Any) -> None:
    code = site.api("GET", "/v1/benefits", params={"status": "active"}).json()["benefits"][0]["code"]
    forged = [
        ("aud", f"/admin/catalogue/{code}/status", {"status": "paused"}),  # the auditor reads, never writes
        ("fin", f"/admin/catalogue/{code}/status", {"status": "paused"}),
        ("cat", "/admin/operations/users", {"username": "intruder", "roles": "admin"}),
        ("sup", "/admin/rules/new", {"document": "{}"}),
    ]
    for user, path, form in forged:
        b.sign_in(page, site, user)
        page.wait_for_url("**/admin/")
        token = b.csrf_token(page)
        response = page.request.post(f"{site.url}{path}", form={**form, "csrf_token": token}, max_redirects=0)
        assert response.status == 403, (user, path, response.status)
        page.context.clear_cookies()
    assert site.api("GET", f"/v1/benefits/{code}").json()["status"] == "active"
    users = site.api("GET", "/v1/audit", params={"object_type": "admin_user", "object_id": "intruder"}).json()
    assert users["entries"] == []


def test_a_form_without_its_csrf_token_is_refused(site: b.Site, page: Any) -> None:
    code = site.api("GET", "/v1/benefits", params={"status": "active"}).json()["benefits"][0]["code"]
    b.sign_in(page, site, "admin")
    page.wait_for_url("**/admin/")
    response = page.request.post(
        f"{site.url}/admin/catalogue/{code}/status", form={"status": "paused"}, max_redirects=0
    )
    assert response.status == 400
    assert "refused" in response.text()
    assert site.api("GET", f"/v1/benefits/{code}").json()["status"] == "active"


def test_wrong_passwords_are_refused_counted_and_lock_the_account(site: b.Site, page: Any) -> None:
    for _attempt in range(5):
        b.sign_in(page, site, "locked", "not-the-password")
        assert "/admin/sign-in" in page.url
        assert b.error_beside(page, "password") == "The user name or the password is wrong."
    b.sign_in(page, site, "locked")  # the right password, too late
    assert "/admin/sign-in" in page.url
    assert "Too many failed attempts" in b.error_beside(page, "password")
    lines = site.api("GET", "/v1/audit", params={"object_type": "admin_user", "object_id": "locked"}).json()["entries"]
    actions = [line["action"] for line in lines]
    assert actions.count("admin.sign_in_failed") == 5 and "admin.sign_in_locked" in actions


#: (user, page, fields to fill, submit button, the field whose error must show)
BAD_INPUT = [
    (
        "cat",
        "/admin/catalogue/new",
        {"#f-code": "Bad Code!", "#f-name": "x", "#f-face_value": "abc"},
        "#save-benefit",
        "face_value",
    ),
    (
        "cat",
        "/admin/catalogue/new",
        {"#f-code": "ok-code", "#f-name": "", "#f-face_value": "1"},
        "#save-benefit",
        "name",
    ),
    ("fin", "/admin/finance/periods", {"#f-period": "2026-13"}, "#close-month", "period"),
    ("fin", "/admin/finance/settings", {"#f-value": "lots"}, "#save-valuation", "value"),
    (
        "admin",
        "/admin/operations/users",
        {"#f-username": "No Spaces Allowed"},
        "#user-form button[type=submit]",
        "username",
    ),
    ("admin", "/admin/operations/api-keys", {"#f-name": ""}, "#key-form button[type=submit]", "name"),
]


@pytest.mark.parametrize("case", range(len(BAD_INPUT)))
def test_bad_input_shows_its_error_beside_the_field_and_changes_nothing(site: b.Site, page: Any, case: int) -> None:
    user, path, fields, submit, field = BAD_INPUT[case]
    before = site.api("GET", "/v1/audit", params={"limit": 1}).json()["entries"]
    b.sign_in(page, site, user)
    page.wait_for_url("**/admin/")
    page.goto(f"{site.url}{path}")
    for selector, value in fields.items():
        page.fill(selector, value)
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click(submit)
    assert answer.value.status == 422
    assert b.error_beside(page, field) != ""
    after = site.api("GET", "/v1/audit", params={"limit": 1}).json()["entries"]
    # nothing was written: the newest audit line is the one before, or this user's sign-in
    assert after == before or after[0]["action"] == "admin.sign_in"


def test_bad_input_on_the_member_page_shows_beside_the_field(site: b.Site, page: Any) -> None:
    member = unique("m")
    enrol_with_points(site, member)
    b.sign_in(page, site, "sup")
    page.wait_for_url("**/admin/")
    page.goto(f"{site.url}/admin/members/{member}")
    page.fill("#f-until", "2030-01-01T00:00")
    page.click("#request-override")
    assert "1 to 500 characters" in b.error_beside(page, "reason")
    assert page.locator("#override-requests tr[data-override-request]").count() == 0  # nothing asked for
    assert site.api("GET", f"/v1/members/{member}").json()["tier"]["override"] is None


# --- screenshots ------------------------------------------------------------------------------------------

PAGES = [
    "/admin/",
    "/admin/catalogue",
    "/admin/catalogue/new",
    "/admin/rules",
    "/admin/members",
    "/admin/finance",
    "/admin/finance?report=rollforward",
    "/admin/finance/settings",
    "/admin/finance/periods",
    "/admin/finance/reconciliations",
    "/admin/operations",
    "/admin/operations/webhooks",
    "/admin/operations/events",
    "/admin/operations/api-keys",
    "/admin/operations/users",
    "/admin/operations/audit",
    "/admin/adjustments",
    "/admin/tier-overrides",
    "/admin/analytics",
    "/admin/analytics/explain?metric=members",
]


def test_every_page_in_both_languages_at_two_widths_is_captured(site: b.Site, chromium: Any) -> None:
    member = unique("m")
    enrol_with_points(site, member)
    asked = site.api(  # a pending adjustment: the Adjustments page shows its approve and reject form
        "POST",
        f"/v1/members/{member}/adjustments",
        json={"points": -300, "reason": "a duplicated goodwill credit"},
        headers={"Idempotency-Key": unique("k")},
    )
    assert asked.status_code == 201, asked.text
    asked = site.api(  # and a pending tier override request, for the Tier overrides page
        "POST",
        f"/v1/members/{member}/tier-override-requests",
        json={"tier": "potential", "until": "2099-01-01T00:00:00+08:00", "reason": "a relationship manager's request"},
        headers={"Idempotency-Key": unique("k")},
    )
    assert asked.status_code == 201, asked.text
    active = site.api("GET", "/v1/benefits", params={"status": "active"}).json()["benefits"]
    code = next(b["code"] for b in active if b["fulfilment"] == "pool")
    version = site.api("GET", "/v1/programmes").json()["versions"][-1]["version"]
    named = {
        f"/admin/catalogue/{code}": "benefit",
        f"/admin/rules/{version}": "programme",
        f"/admin/members/{member}": "member",
    }
    pages = [*PAGES, *named]
    shots = []
    for viewport in (b.DESKTOP, b.NARROW):
        context = chromium.new_context(viewport=viewport)
        page = context.new_page()
        page.goto(f"{site.url}/admin/sign-in")
        shots.append(b.shoot(page, site.backend, "sign-in"))
        b.sign_in(page, site, "admin")
        page.wait_for_url("**/admin/")
        for language in ("en", "zh-CN"):
            if page.locator("html").get_attribute("lang") != language:
                page.click("header form.inline button[name=locale]")
                page.wait_for_load_state()
            assert page.locator("html").get_attribute("lang") == language
            for path in pages:
                response = page.goto(f"{site.url}{path}")
                assert response.status == 200, (path, response.status)
                shots.append(b.shoot(page, site.backend, named.get(path) or b.slug(path[7:]) or "dashboard"))
        if page.locator("html").get_attribute("lang") != "en":
            page.click("header form.inline button[name=locale]")
        context.close()
    assert all(path.stat().st_size > 5_000 for path in shots)
    assert len(shots) == 2 * (1 + 2 * len(pages))

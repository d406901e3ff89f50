"""The ``loyalty`` command as an operator uses it, run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from loyalty.auth.service import hash_key
from loyalty.ledger.models import SYSTEM_ACCOUNTS

LOYALTY = str(Path(sys.executable).with_name("loyalty"))


def loyalty(database_url: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOYALTY_DATABASE_URL": database_url}
    return subprocess.run([LOYALTY, *args], env=env, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_db_upgrade_creates_the_schema_on_a_new_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    result = loyalty(url, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        codes = conn.execute(sa.text("SELECT code FROM accounts ORDER BY code")).scalars().all()
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()
    # The chart of accounts starts with exactly the system accounts.
    assert len(codes) == 6
    assert codes == sorted(a["code"] for a in SYSTEM_ACCOUNTS)
    assert loyalty(url, "db", "upgrade").returncode == 0  # idempotent


@pytest.mark.committed
def test_api_keys_create_prints_the_key_last_and_stores_only_its_hash(database_url, engine):
    result = loyalty(database_url, "api-keys", "create", "--name", "mobile-app", "--scopes", "accrue,read")
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("lk_")
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT name, scopes, key_hash FROM api_keys")).one()
        dump = " ".join(str(v) for v in conn.execute(sa.text("SELECT * FROM api_keys")).one())
    assert (row.name, row.scopes, row.key_hash) == ("mobile-app", "accrue,read", hash_key(key))
    assert key not in dump


def test_api_keys_create_refuses_unknown_scopes(unopened_url):
    result = loyalty(unopened_url, "api-keys", "create", "--name", "x", "--scopes", "accrue,root")
    assert result.returncode == 2
    assert "root" in result.stderr


@pytest.mark.committed
def test_demo_key_is_created_once_and_then_reused(database_url, tmp_path):
    first = loyalty(database_url, "api-keys", "demo", "--file", str(tmp_path / "key"))
    second = loyalty(database_url, "api-keys", "demo", "--file", str(tmp_path / "key"))
    assert first.returncode == 0 and second.returncode == 0
    assert first.stdout.strip() == second.stdout.strip() == (tmp_path / "key").read_text().strip()


@pytest.mark.committed
def test_verify_reports_a_clean_ledger(database_url, client):
    client.post("/v1/members", json={"member_id": "m1"})
    result = loyalty(database_url, "verify")
    assert result.returncode == 0, result.stdout
    assert "every invariant holds" in result.stdout


def test_rules_install_default_is_idempotent(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert loyalty(url, "db", "upgrade").returncode == 0
    first = loyalty(url, "rules", "install-default")
    assert first.returncode == 0 and "installed programme 2026.1" in first.stdout
    second = loyalty(url, "rules", "install-default")
    assert second.returncode == 0 and "nothing to do" in second.stdout


def test_rules_validate_names_the_bad_field(unopened_url, tmp_path):
    import json

    from rules import default_document

    good = tmp_path / "good.json"
    good.write_text(json.dumps(default_document()))
    assert loyalty(unopened_url, "rules", "validate", str(good)).returncode == 0
    doc = default_document()
    doc["rules"][0]["conditions"]["all"][0]["var"] = "colour"
    bad = tmp_path / "bad.yaml"
    import yaml

    bad.write_text(yaml.safe_dump(doc, allow_unicode=True))
    result = loyalty(unopened_url, "rules", "validate", str(bad))
    assert result.returncode == 1
    assert "$.rules[0].conditions.all[0].var" in result.stderr


@pytest.mark.committed
def test_rules_backtest_prints_the_report(database_url, client, tmp_path):
    import json

    from rules import default_document

    client.post("/v1/members", json={"member_id": "m1"})
    client.post(
        "/v1/transactions",
        json={
            "transaction_id": "t1",
            "member_id": "m1",
            "type": "card_purchase",
            "amount": 10_000,
            "currency": "CNY",
            "occurred_at": "2026-06-15T09:00:00Z",
        },
    )
    doc = default_document()
    doc["version"] = "triple"
    doc["rules"][0]["action"]["points"] = 3
    candidate = tmp_path / "candidate.json"
    candidate.write_text(json.dumps(doc))
    result = loyalty(
        database_url, "rules", "backtest", "--candidate", str(candidate), "--from", "2026-06-01", "--to", "2026-07-01"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["points"] == {"actual": 100, "candidate": 300, "delta": 200}
    assert report["from"] == "2026-05-31T16:00:00Z"  # local midnight in the programme's zone

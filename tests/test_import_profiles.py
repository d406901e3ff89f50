"""``loyalty import-profiles``: the bank's monthly asset snapshot, bulk and idempotent."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from loyalty import cli
from loyalty.db import is_postgres, transaction
from loyalty.members.profiles import get_profile
from loyalty.members.service import Enrolment, enrol

HEADER = [
    "member_id",
    "as_of",
    "aum",
    "profit_contribution",
    "products_held",
    "birth_date",
    "occupation",
    "region",
    "preferred_channel",
    "risk_profile",
]
MARCH = "2026-03-31"
FEBRUARY = "2026-02-28"


def write_csv(path: Path, rows: list[list[object]], header: list[str] = HEADER, encoding: str = "utf-8") -> Path:
    with path.open("w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def snapshot_row(member_id: str, as_of: str = MARCH, **cells: object) -> list[object]:
    values: dict[str, object] = {"member_id": member_id, "as_of": as_of, **cells}
    return [values.get(c, "") for c in HEADER]


@pytest.fixture
def run_import(runtime):
    def run(path: Path, *args: str) -> Any:
        return CliRunner().invoke(
            cli.main, ["import-profiles", str(path), "--no-progress", *args], obj=runtime, catch_exceptions=False
        )

    return run


@pytest.fixture
def members(runtime) -> list[str]:
    ids = [f"m{i}" for i in range(1, 10)]
    with transaction(runtime.engine) as conn:
        for m in ids:
            enrol(conn, Enrolment(m), programme=runtime.programme, now=runtime.now())
    return ids


def profile(engine: sa.Engine, member_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return get_profile(conn, member_id)


def stored(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT p.*, m.birth_date AS member_birth_date FROM member_profiles p "
                    "JOIN members m ON m.member_id = p.member_id ORDER BY p.member_id"
                )
            )
        ]


def test_a_snapshot_is_stored(members, run_import, engine, tmp_path):
    path = write_csv(
        tmp_path / "snapshot.csv",
        [
            snapshot_row(
                "m1",
                aum=1_250_000_00,
                profit_contribution=-3_500_00,
                products_held="wealth|deposit|credit_card",
                birth_date="1985-03-09",
                occupation="教师",
                region="310000",
                preferred_channel="app",
                risk_profile="growth",
            ),
            snapshot_row("m2", aum=0),
            snapshot_row("m3", products_held="loan"),
        ],
    )
    result = run_import(path)
    assert result.exit_code == 0, result.output
    assert "read 3, upserted 3, unchanged 0, skipped 0 older than stored, rejected 0" in result.output
    assert not (tmp_path / "snapshot.csv.rejects.csv").exists()
    m1 = profile(engine, "m1")
    assert {k: v for k, v in m1.items() if k != "updated_at"} == {
        "member_id": "m1",
        "as_of": MARCH,
        "aum": 1_250_000_00,
        "profit_contribution": -3_500_00,
        "products_held": ["credit_card", "deposit", "wealth"],
        "birth_date": "1985-03-09",
        "occupation": "教师",
        "region": "310000",
        "preferred_channel": "app",
        "risk_profile": "growth",
    }
    assert m1["updated_at"] == "2026-06-15T10:00:00Z"
    m2 = profile(engine, "m2")
    assert (m2["aum"], m2["products_held"], m2["occupation"], m2["birth_date"]) == (0, None, None, None)
    with engine.connect() as conn:
        products = dict(conn.execute(sa.text("SELECT member_id, products_held FROM member_profiles")).all())
    assert products == {"m1": ",credit_card,deposit,wealth,", "m2": None, "m3": ",loan,"}


def test_imported_assets_upgrade_members_at_once(members, run_import, engine, tmp_path):
    path = write_csv(
        tmp_path / "s.csv",
        [
            snapshot_row("m1", aum=200_000_000),  # 2,000,000 CNY: hnw
            snapshot_row("m2", aum=5_000_000),  # 50,000 CNY: mass
            snapshot_row("m3", aum=4_999_999),
            snapshot_row("m4", profit_contribution=5_000_000),  # 50,000 CNY a year: hnw
        ],
    )
    assert "upserted 4" in run_import(path, "--chunk-size", "3").output
    with engine.connect() as conn:
        tiers = dict(conn.execute(sa.text("SELECT member_id, tier FROM members WHERE member_id <= 'm4'")).all())
        changes = conn.execute(sa.text("SELECT count(*) FROM tier_changes WHERE source = 'event'")).scalar_one()
    assert tiers == {"m1": "hnw", "m2": "mass", "m3": "basic", "m4": "hnw"}
    assert changes == 3


def test_bad_rows_go_to_the_rejects_file_with_line_member_and_reason(members, run_import, engine, tmp_path):
    path = write_csv(
        tmp_path / "snapshot.csv",
        [
            snapshot_row("m1", aum=100),  # line 2
            snapshot_row("ghost", aum=100),
            snapshot_row("m2", aum="12.50"),
            snapshot_row("m3", products_held="deposit|lottery"),
            snapshot_row("m4", birth_date="1990-13-01"),
            snapshot_row("m5", as_of=""),
            snapshot_row("m6", as_of="2026-06-16"),
            snapshot_row("m7", preferred_channel="fax"),
            snapshot_row("bad id", aum=1),
            snapshot_row("m8", profit_contribution="1,000"),
            snapshot_row("m9", products_held="deposit|deposit", occupation="13800138000"),  # line 12
        ],
    )
    result = run_import(path, "--chunk-size", "4")
    assert result.exit_code == 0, result.output
    rejects_path = tmp_path / "snapshot.csv.rejects.csv"
    assert "read 11, upserted 1, unchanged 0, skipped 0 older than stored, rejected 10" in result.output
    assert f"(see {rejects_path})" in result.output
    with rejects_path.open(newline="", encoding="utf-8") as f:
        rejects = list(csv.reader(f))
    assert rejects[0] == ["line", "member_id", "reason"]
    assert [(line, member) for line, member, _ in rejects[1:]] == [
        ("3", "ghost"),
        ("4", "m2"),
        ("5", "m3"),
        ("6", "m4"),
        ("7", "m5"),
        ("8", "m6"),
        ("9", "m7"),
        ("10", "bad id"),
        ("11", "m8"),
        ("12", "m9"),
    ]
    reasons = {member: reason for _, member, reason in rejects[1:]}
    assert reasons["ghost"] == "member 'ghost' is not enrolled"
    assert reasons["m2"].startswith("aum: Not a valid integer")
    assert "unknown product 'lottery'" in reasons["m3"]
    assert reasons["m4"].startswith("birth_date: Not a valid date")
    assert reasons["m5"] == "as_of: is required in a snapshot row"
    assert reasons["m6"] == "as_of: is after today (2026-06-15)"
    assert reasons["m7"].startswith("preferred_channel: Must be one of")
    assert reasons["bad id"].startswith("member_id: ")
    assert reasons["m8"].startswith("profit_contribution: Not a valid integer")
    assert "products_held: lists 'deposit' more than once" in reasons["m9"]
    assert "occupation: must not hold a phone" in reasons["m9"]
    assert [r[0] for r in stored(engine)] == ["m1"]


def test_running_the_same_file_again_changes_nothing(members, run_import, engine, clock, tmp_path):
    path = write_csv(
        tmp_path / "snapshot.csv",
        [
            snapshot_row("m1", aum=100, birth_date="1985-03-09", products_held="fund|deposit"),
            snapshot_row("m2", aum=200, region="北京"),
            snapshot_row("m3", aum="x"),
        ],
    )
    assert "upserted 2, unchanged 0" in run_import(path).output
    before = stored(engine)
    clock.advance(hours=1)
    again = run_import(path)
    assert "read 3, upserted 0, unchanged 2, skipped 0 older than stored, rejected 1" in again.output
    assert stored(engine) == before


def test_an_older_snapshot_does_not_overwrite_a_newer_one(members, run_import, engine, tmp_path):
    march = write_csv(
        tmp_path / "march.csv",
        [snapshot_row("m1", aum=300, risk_profile="growth"), snapshot_row("m2", aum=300, birth_date="1980-01-01")],
    )
    february = write_csv(
        tmp_path / "february.csv",
        [
            snapshot_row("m1", FEBRUARY, aum=200, occupation="farmer"),
            snapshot_row("m2", FEBRUARY, aum=200, birth_date="1981-01-01"),
            snapshot_row("m3", FEBRUARY, aum=200),
        ],
    )
    run_import(march)
    before = stored(engine)
    result = run_import(february)
    assert "read 3, upserted 1, unchanged 0, skipped 2 older than stored, rejected 0" in result.output
    assert stored(engine)[:2] == before
    assert (profile(engine, "m1")["aum"], profile(engine, "m1")["occupation"]) == (300, None)
    assert profile(engine, "m2")["birth_date"] == "1980-01-01"
    assert profile(engine, "m3")["as_of"] == FEBRUARY

    correction = write_csv(tmp_path / "march-corrected.csv", [snapshot_row("m1", aum=310), snapshot_row("m2", aum=300)])
    result = run_import(correction)
    assert "read 2, upserted 1, unchanged 1, skipped 0" in result.output
    assert profile(engine, "m1")["aum"] == 310


def test_empty_cells_keep_the_stored_values(members, run_import, client, engine, tmp_path):
    full = {
        "aum": 1,
        "profit_contribution": 2,
        "products_held": ["loan"],
        "birth_date": "1970-01-01",
        "occupation": "nurse",
        "region": "440300",
        "preferred_channel": "branch",
        "risk_profile": "cautious",
        "as_of": "2026-06-01",
    }
    assert client.put("/v1/members/m1/profile", json=full).status_code == 200
    run_import(write_csv(tmp_path / "s.csv", [snapshot_row("m1", "2026-06-10", aum=5)]))
    after = profile(engine, "m1")
    assert after["aum"] == 5
    assert after["as_of"] == "2026-06-10"
    assert {k: after[k] for k in full if k not in ("aum", "as_of")} == {
        k: v for k, v in full.items() if k not in ("aum", "as_of")
    }
    assert client.get("/v1/members/m1/profile").get_json() == after


@pytest.mark.parametrize("chunk_size", ["1", "100"])
def test_a_member_twice_in_a_file_is_applied_in_file_order(members, run_import, engine, tmp_path, chunk_size):
    path = write_csv(
        tmp_path / "s.csv",
        [
            snapshot_row("m1", "2026-06-01", aum=1, occupation="clerk"),
            snapshot_row("m2", "2026-06-01", aum=1),
            snapshot_row("m1", "2026-06-03", aum=3),
            snapshot_row("m1", "2026-06-02", aum=2, region="310000"),
        ],
    )
    result = run_import(path, "--chunk-size", chunk_size)
    assert "read 4, upserted 3, unchanged 0, skipped 1 older than stored" in result.output
    m1 = profile(engine, "m1")
    assert (m1["aum"], m1["as_of"], m1["occupation"], m1["region"]) == (3, "2026-06-03", "clerk", None)


@pytest.fixture
def failing_member(engine) -> Iterator[str]:
    """Make the database refuse to store m5's profile, as a failing disk or a
    lost connection would, until the fixture ends."""
    with engine.begin() as conn:
        if is_postgres(conn):
            conn.exec_driver_sql(
                "CREATE FUNCTION test_profile_fault() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION USING MESSAGE = 'injected fault storing ' || NEW.member_id; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER test_profile_fault BEFORE INSERT OR UPDATE ON member_profiles FOR EACH ROW "
                "WHEN (NEW.member_id = 'm5') EXECUTE FUNCTION test_profile_fault()"
            )
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER test_profile_fault BEFORE INSERT ON member_profiles "
                "WHEN NEW.member_id = 'm5' BEGIN SELECT RAISE(ABORT, 'injected fault storing m5'); END"
            )
    try:
        yield "m5"
    finally:
        heal(engine)


def heal(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "DROP TRIGGER IF EXISTS test_profile_fault" + (" ON member_profiles" if is_postgres(conn) else "")
        )
        if is_postgres(conn):
            conn.exec_driver_sql("DROP FUNCTION IF EXISTS test_profile_fault()")


def test_a_run_that_fails_part_way_keeps_earlier_chunks_and_a_rerun_finishes(
    members, failing_member, run_import, engine, tmp_path
):
    rows = [snapshot_row(m, aum=100 * i) for i, m in enumerate(members, start=1)]
    path = write_csv(tmp_path / "s.csv", rows)
    result = run_import(path, "--chunk-size", "3")
    assert result.exit_code == 1
    assert "the chunk starting on line 5 failed and was rolled back" in result.output
    assert "injected fault storing m5" in result.output
    assert "The 3 rows before it are done; run the command again" in result.output
    assert [r[0] for r in stored(engine)] == ["m1", "m2", "m3"]  # m4, in the failed chunk, was rolled back too

    heal(engine)
    result = run_import(path, "--chunk-size", "3")
    assert result.exit_code == 0, result.output
    assert "read 9, upserted 6, unchanged 3, skipped 0 older than stored, rejected 0" in result.output
    assert [(r[0], r[1]) for r in stored(engine)] == [(m, 100 * i) for i, m in enumerate(members, start=1)]


def test_a_file_with_a_byte_order_mark_is_read(members, run_import, engine, tmp_path):
    path = write_csv(tmp_path / "s.csv", [snapshot_row("m1", aum=5, occupation="工程师")], encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert "upserted 1" in run_import(path).output
    assert profile(engine, "m1")["occupation"] == "工程师"


def test_without_a_programme_in_force_the_run_stops_and_stores_nothing(members, run_import, engine, clock, tmp_path):
    clock.now = clock.now.replace(year=2019)
    result = run_import(write_csv(tmp_path / "s.csv", [snapshot_row("m1", "2019-01-31", aum=5)]))
    assert result.exit_code == 1
    assert "no programme version is in force" in result.output
    assert stored(engine) == []


def test_a_file_without_the_columns_is_refused(members, runtime, tmp_path):
    path = write_csv(tmp_path / "s.csv", [["m1", MARCH, 1]], header=["member_id", "as_of", "assets"])
    result = CliRunner().invoke(cli.main, ["import-profiles", str(path)], obj=runtime)
    assert result.exit_code == 2
    assert "the header lacks aum, profit_contribution, products_held" in result.output


@pytest.mark.committed
def test_the_command_runs_as_a_real_process(members, database_url, engine, tmp_path):
    path = write_csv(tmp_path / "s.csv", [snapshot_row("m1", aum=7), snapshot_row("nobody", aum=7)])
    rejects = tmp_path / "out" / "rejects.csv"
    rejects.parent.mkdir()
    loyalty = str(Path(sys.executable).with_name("loyalty"))
    result = subprocess.run(
        [loyalty, "import-profiles", str(path), "--rejects", str(rejects), "--chunk-size", "1"],
        env={**os.environ, "LOYALTY_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "read 2, upserted 1, unchanged 0, skipped 0 older than stored, rejected 1" in result.stdout
    assert rejects.read_text(encoding="utf-8").splitlines()[1] == "3,nobody,member 'nobody' is not enrolled"
    assert profile(engine, "m1")["aum"] == 7

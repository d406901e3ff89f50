"""The published development key signs only for partners on the loopback interface: a service
pointed at a real partner without its own key refuses to start, and says which variable to set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loyalty.config import DEV_PARTNER_SECRET, Settings

ROOT = Path(__file__).resolve().parent.parent
LOYALTY = str(Path(sys.executable).with_name("loyalty"))
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
REAL_PARTNER = "telecom=https://topup.partner.example/api"
SHARED = "a-shared-partner-key-0123456789"  # noqa: S105  (a fixture, not a credential)


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The process environment without any LOYALTY_* setting of the developer's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
    env["LOYALTY_DATABASE_URL"] = f"sqlite:///{tmp_path / 'loyalty.db'}"
    env.update(extra)
    return env


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"LOYALTY_PARTNERS": REAL_PARTNER}, "LOYALTY_PARTNER_SECRET_TELECOM or LOYALTY_PARTNER_SECRET"),
        # set, but to the published key: the same as not set
        (
            {"LOYALTY_PARTNERS": REAL_PARTNER, "LOYALTY_PARTNER_SECRET": DEV_PARTNER_SECRET},
            "LOYALTY_PARTNER_SECRET_TELECOM or LOYALTY_PARTNER_SECRET",
        ),
        # the telecom partner has its own key; the video partner, elsewhere too, has none
        (
            {
                "LOYALTY_PARTNERS": f"{REAL_PARTNER},video-iq=http://10.1.2.3:8443/video",
                "LOYALTY_PARTNER_SECRET_TELECOM": SHARED,
            },
            "LOYALTY_PARTNER_SECRET_VIDEO_IQ or LOYALTY_PARTNER_SECRET",
        ),
        ({"LOYALTY_PARTNERS": "telecom=http://0.0.0.0:8090/telecom"}, "LOYALTY_PARTNER_SECRET"),
        ({"LOYALTY_PARTNERS": "telecom=http://localhost.partner.example/telecom"}, "LOYALTY_PARTNER_SECRET"),
    ],
)
def test_a_partner_off_the_loopback_interface_without_its_own_key_is_refused(env, variable):
    with pytest.raises(ValueError, match=re.escape(variable) + ".*not on the loopback interface"):
        Settings.from_env(env)


def test_settings_made_directly_are_checked_too():
    with pytest.raises(ValueError, match="LOYALTY_PARTNER_SECRET_TELECOM or LOYALTY_PARTNER_SECRET must be set"):
        Settings(partners={"telecom": "https://topup.partner.example/api"})


@pytest.mark.parametrize(
    "env",
    [
        {"LOYALTY_PARTNERS": REAL_PARTNER, "LOYALTY_PARTNER_SECRET": SHARED},
        {"LOYALTY_PARTNERS": REAL_PARTNER, "LOYALTY_PARTNER_SECRET_TELECOM": SHARED},
        # a real partner with its own key beside the sandbox on loopback, which keeps the default key
        {
            "LOYALTY_PARTNERS": f"{REAL_PARTNER},video=http://127.0.0.1:8090/video",
            "LOYALTY_PARTNER_SECRET_TELECOM": SHARED,
        },
    ],
)
def test_a_real_partner_with_a_key_of_its_own_is_accepted(env):
    settings = Settings.from_env(env)
    assert settings.partner_secret_for("telecom") == SHARED


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8090/telecom",
        "http://127.8.9.10/telecom",
        "http://localhost:8090/telecom",
        "http://[::1]:8090/telecom",
    ],
)
def test_the_development_key_is_accepted_on_the_loopback_interface(url):
    settings = Settings.from_env({"LOYALTY_PARTNERS": f"telecom={url}"})
    assert settings.partner_secret_for("telecom") == DEV_PARTNER_SECRET


def test_the_command_refuses_to_start_and_names_the_variable(tmp_path):
    result = subprocess.run(
        [LOYALTY, "db", "upgrade"],
        env=clean_env(tmp_path, LOYALTY_PARTNERS=REAL_PARTNER),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout
    assert "LOYALTY_PARTNER_SECRET_TELECOM or LOYALTY_PARTNER_SECRET must be set" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""

    started = subprocess.run(
        [LOYALTY, "db", "upgrade"],
        env=clean_env(tmp_path, LOYALTY_PARTNERS=REAL_PARTNER, LOYALTY_PARTNER_SECRET=SHARED),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("database at head")


def test_the_web_application_refuses_to_start_and_names_the_variable(tmp_path):
    """gunicorn, as ``make run`` starts it: the application cannot be loaded, so it exits."""
    server = subprocess.Popen(
        [GUNICORN, "--bind", "127.0.0.1:0", "--workers", "1", "--timeout", "30", "wsgi:app"],
        env=clean_env(tmp_path, LOYALTY_PARTNERS=REAL_PARTNER),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _out, err = server.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        server.terminate()
        _out, err = server.communicate(timeout=30)
        pytest.fail(f"gunicorn started serving with a partner signed by the published key:\n{err}")
    assert server.returncode != 0
    assert "LOYALTY_PARTNER_SECRET_TELECOM or LOYALTY_PARTNER_SECRET must be set" in err
    assert "Booting worker" in err  # it did start, and then refused

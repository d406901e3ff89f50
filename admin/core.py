"""The frame of the admin UI: the blueprint, sign-in and sessions, roles, CSRF, security headers,
languages and formats, and what every page shares."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from functools import wraps
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask_babel import Babel, format_currency, format_datetime, format_decimal, get_locale
from flask_babel import gettext as _
from flask_login import LoginManager, current_user, login_user, logout_user
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy.engine import Connection
from werkzeug.exceptions import HTTPException
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from loyalty import calendar
from loyalty.auth import admins
from loyalty.auth.models import LOCALES, ROLES
from loyalty.db import transaction
from loyalty.errors import LoyaltyError, ValidationError
from loyalty.finance import export
from loyalty.runtime import Runtime

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates", static_folder="static")

#: A session ends after this long without a request.
IDLE = dt.timedelta(minutes=30)
#: Methods that read: an auditor may use them on every view.
READS = ("GET", "HEAD")
#: Views anyone may reach: signing in, and the static files.
PUBLIC = {"admin.sign_in", "admin.static"}

login_manager = LoginManager()
csrf = CSRFProtect()
_PROCESS_SECRET = secrets.token_hex(32)


def process_secret() -> str:
    """A session key for an application without LOYALTY_SECRET_KEY: valid in this process only."""
    return _PROCESS_SECRET


class User:
    """The signed-in person, for Flask-Login."""

    is_authenticated = True
    is_active = True
    is_anonymous = False

    def __init__(self, user: admins.AdminUser) -> None:
        self.user = user
        self.username = user.username
        self.roles = user.roles
        self.locale = user.locale

    def get_id(self) -> str:
        return f"{self.user.id}:{self.user.session_epoch}"

    def may(self, *roles: str) -> bool:
        return self.user.may(*roles)


class AdminSessionInterface(SecureCookieSessionInterface):
    """The session cookie is ``Secure`` whenever the request came over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or bool(app.config["SESSION_COOKIE_SECURE"])


def runtime() -> Runtime:
    return current_app.extensions["loyalty"]  # type: ignore[no-any-return]


@contextmanager
def reading() -> Iterator[Connection]:
    with transaction(runtime().engine, readonly=True) as conn:
        yield conn


def actor() -> str:
    """Who an audit line names for a change made here."""
    return f"admin:{current_user.username}"


def zone() -> dt.tzinfo:
    return runtime().programme.zone


def init_app(app: Flask, *, translations: Path) -> None:
    app.config.update(
        WTF_CSRF_CHECK_DEFAULT=False,  # checked on the admin blueprint alone: the JSON API has API keys
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session, which ends when idle
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_NAME="loyalty_admin",
        SESSION_REFRESH_EACH_REQUEST=True,
        PERMANENT_SESSION_LIFETIME=IDLE,
        BABEL_TRANSLATION_DIRECTORIES=str(translations),
        BABEL_DEFAULT_LOCALE="zh_CN",
    )
    app.session_interface = AdminSessionInterface()
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "admin.sign_in"
    login_manager.login_message = ""
    Babel(app, locale_selector=_locale, timezone_selector=lambda: str(zone()))
    app.jinja_env.filters.update(points=points, yuan=yuan, when=when, day=day, rate=rate)
    app.jinja_env.globals.update(ROLES=ROLES, LOCALES=LOCALES)


def _locale() -> str:
    user = current_user
    if user and getattr(user, "is_authenticated", False):
        return str(user.locale)
    chosen = session.get("locale")
    if chosen in LOCALES:
        return str(chosen)
    return "en" if request.accept_languages.best_match(["zh-CN", "en"], "zh-CN") == "en" else "zh_CN"


@login_manager.user_loader
def _load(user_id: str) -> User | None:
    ident, _, epoch = user_id.partition(":")
    if not ident.isdigit() or not epoch.isdigit():
        return None
    with reading() as conn:
        found = admins.load(conn, int(ident), int(epoch))
    return None if found is None else User(found)


# --- formats --------------------------------------------------------------------------------------


def points(value: Any) -> str:
    """An integer number of points with the locale's thousands separators."""
    if value is None or value == "":
        return ""
    return str(format_decimal(int(value), format="#,##0"))


def yuan(fen: Any) -> str:
    """An amount in fen as yuan, e.g. ¥1,234.50."""
    if fen is None or fen == "":
        return ""
    return str(format_currency(Decimal(int(fen)) / 100, "CNY", format="¤#,##0.00", currency_digits=False))


def rate(value: Any) -> str:
    """A ratio (a decimal string such as ``"0.2500"``) as a percentage with one decimal; ``–`` for none."""
    if value is None or value == "":
        return "–"
    return f"{(Decimal(str(value)) * 100).quantize(Decimal('0.1'))}%"


def when(value: Any) -> str:
    """A moment in the bank's time zone."""
    if not value:
        return ""
    moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return str(format_datetime(moment, "yyyy-MM-dd HH:mm"))


def day(value: Any) -> str:
    return "" if not value else str(value)[:10]


# --- roles, sessions, headers ------------------------------------------------------------------------


def roles(*allowed: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Who may use a view: holders of one of ``allowed``; an ``auditor`` may also read (GET).

    The blueprint refuses a view that does not say (deny by default)."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return view(*args, **kwargs)

        wrapper.admin_roles = frozenset(allowed)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def allowed(endpoint: str, method: str = "GET") -> bool:
    """Whether the signed-in user may use ``endpoint`` (for the navigation; the server checks anyway)."""
    view = current_app.view_functions.get(endpoint)
    needed = getattr(view, "admin_roles", None)
    if needed is None:
        return False
    return bool(current_user.may(*needed) or (method in READS and current_user.may("auditor")))


@bp.before_request
def _guard() -> Any:
    if request.endpoint in PUBLIC:
        if request.method == "POST":
            csrf.protect()
        return None
    if not current_user.is_authenticated:
        if request.method not in READS:
            abort(401)
        return redirect(url_for("admin.sign_in", next=request.full_path))
    now = runtime().now().timestamp()
    seen = session.get("seen")
    if isinstance(seen, (int, float)) and now - seen > IDLE.total_seconds():
        logout_user()
        session.clear()
        flash(_("Your session ended after %(minutes)d idle minutes; sign in again.", minutes=IDLE.seconds // 60))
        return redirect(url_for("admin.sign_in"))
    session["seen"] = now
    session.permanent = True
    if request.method == "POST":
        csrf.protect()
    if request.endpoint is None or not allowed(request.endpoint, request.method):
        abort(403)
    g.allowed = allowed
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.is_secure:
        response.headers["Strict-Transport-Security"] = "max-age=31536000"
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(CSRFError)
def _csrf_refused(err: CSRFError) -> tuple[str, int]:
    return render_template(
        "admin/error.html", status=400, message=_("The form was refused: %(reason)s", reason=err.description)
    ), 400


@bp.errorhandler(HTTPException)
def _http_error(err: HTTPException) -> tuple[str, int]:
    messages = {
        401: _("Sign in first."),
        403: _("Your roles do not allow this."),
        404: _("There is nothing here."),
    }
    code = err.code or 500
    return render_template("admin/error.html", status=code, message=messages.get(code, err.description)), code


@bp.errorhandler(Exception)
def _failed(err: Exception) -> tuple[str, int]:
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return render_template("admin/error.html", status=500, message=_("The server failed; the error is logged.")), 500


@bp.errorhandler(LoyaltyError)
def _refused(err: LoyaltyError) -> tuple[str, int]:
    return render_template("admin/error.html", status=err.status, message=err.detail), err.status


@bp.app_context_processor
def _shared() -> dict[str, Any]:
    return {"may": allowed, "locale": str(get_locale() or "zh_CN")}


# --- sign-in ----------------------------------------------------------------------------------------


class SignInForm(FlaskForm):
    username = StringField("username", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("password", validators=[DataRequired(), Length(max=200)])


def address() -> str:
    return request.remote_addr or "unknown"


def safe_next(target: str | None) -> str:
    """Only a path of this UI: never another site."""
    if target and target.startswith("/admin") and not urlsplit(target).netloc and "\\" not in target:
        return target
    return url_for("admin.dashboard")


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    form = SignInForm()
    status = 200
    if form.validate_on_submit():
        refusal: LoyaltyError | None = None
        rt = runtime()
        with transaction(rt.engine) as conn:
            try:
                user = admins.sign_in(
                    conn,
                    username=form.username.data or "",
                    password=form.password.data or "",
                    address=address(),
                    now=rt.now(),
                )
            except (admins.SignInRefused, admins.TooManyAttempts) as exc:
                refusal = exc  # the attempt is recorded: the transaction commits
        if refusal is None:
            session.clear()
            login_user(User(user))
            session["seen"] = rt.now().timestamp()
            session.permanent = True
            return redirect(safe_next(request.args.get("next")))
        status = refusal.status
        message = (
            _("Too many failed attempts; try again in 15 minutes.")
            if isinstance(refusal, admins.TooManyAttempts)
            else _("The user name or the password is wrong.")
        )
        form.password.errors = [message]
    elif request.method == "POST":
        status = 422
    return render_template("admin/sign_in.html", form=form), status


@bp.post("/sign-out")
@roles(*ROLES)
def sign_out() -> Any:
    rt = runtime()
    with transaction(rt.engine) as conn:
        admins.sign_out(conn, current_user.user, address=address(), now=rt.now())
    logout_user()
    session.clear()
    return redirect(url_for("admin.sign_in"))


@bp.post("/language")
@roles(*ROLES)
def language() -> Any:
    chosen = request.form.get("locale", "")
    if chosen not in LOCALES:
        abort(400)
    with transaction(runtime().engine) as conn:
        admins.set_locale(conn, current_user.user.id, chosen)
    return redirect(safe_next(request.form.get("next")))


# --- what pages share ----------------------------------------------------------------------------


class Form(FlaskForm):
    """A form of fields the view reads itself; only its CSRF token is checked here."""


def faults(exc: LoyaltyError, default: str) -> dict[str, list[str]]:
    """A refusal as field -> messages, to show beside the fields; one without a field goes beside ``default``."""
    if isinstance(exc, ValidationError):
        return dict(exc.errors)
    return {exc.field or default: [exc.detail]}


def table_download(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Response | None:
    """The table as ``?format=csv`` or ``?format=xlsx``; ``None`` for the page itself."""
    fmt = request.args.get("format")
    if fmt not in ("csv", "xlsx"):
        return None
    body = export.render((header, list(rows)), fmt, title=title)
    return Response(
        body,
        mimetype=export.MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{title}.{fmt}"'},
    )


def local_day(raw: str | None, field: str) -> dt.date:
    try:
        return dt.date.fromisoformat(raw or "")
    except ValueError:
        raise ValidationError.one(field, "must be a date YYYY-MM-DD") from None


def local_moment(raw: str | None, field: str) -> dt.datetime | None:
    """A ``datetime-local`` value in the bank's time zone, as UTC; empty is ``None``."""
    if not raw:
        return None
    try:
        naive = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationError.one(field, "must be a date and time YYYY-MM-DDTHH:MM") from None
    if naive.tzinfo is not None:
        return naive.astimezone(dt.UTC)
    return naive.replace(tzinfo=zone()).astimezone(dt.UTC)


def today() -> dt.date:
    return calendar.local_date(runtime().now(), zone())


def done(message: str) -> None:
    flash(message, "ok")

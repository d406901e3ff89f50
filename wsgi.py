"""WSGI entry point: ``gunicorn wsgi:app``: the JSON API under ``/v1`` and the admin UI under ``/admin``.

The two entry points are composed here, not in :func:`loyalty.app.create_app`, because the
service (``loyalty``) never imports the admin UI that sits on top of it."""

from admin import mount
from loyalty.app import create_app

app = mount(create_app())

"""WSGI entry point: ``gunicorn wsgi:app``."""

from loyalty import create_app

app = create_app()

"""WSGI entry point: ``gunicorn wsgi:app``."""

from loyalty.app import create_app

app = create_app()

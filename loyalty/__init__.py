"""loyalty: a double-entry loyalty points and benefits engine for retail banks.

The package root imports nothing, so the domain never loads the web layer:
the WSGI application is :func:`loyalty.app.create_app`, the command line
:mod:`loyalty.cli`, and what both hand to the domain :class:`loyalty.runtime.Runtime`.
"""

"""Generic WSGI middleware tests."""

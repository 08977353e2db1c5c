"""A small Django shop for the overhead benchmark: the seven standard middleware, DEBUG off,
SQLite or PostgreSQL, and the four kinds of view the benchmark serves (see ``views.py``)."""

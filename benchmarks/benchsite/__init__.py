"""The Django site the HTTP benchmarks serve: indexed ``SELECT`` views (one query for
``web.py``; the waiting, async and ten-query views for ``leases.py``), under WSGI or ASGI."""

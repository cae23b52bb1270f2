"""A small ASGI site for the server tests (``tests/test_asgi_servers.py``): async and sync
views over django_dbpool's pooled ENGINEs, the health views and the 503 middleware."""

"""Pooled ENGINEs: ``django_dbpool.backends.postgresql`` and ``django_dbpool.backends.mysql``."""

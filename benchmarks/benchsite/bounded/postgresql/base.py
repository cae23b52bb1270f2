"""Django's postgresql backend with the bound (see ``benchsite.bounded``)."""

from django.db.backends.postgresql import base

from .. import bound

DatabaseWrapper = bound(base.DatabaseWrapper)

"""Django's mysql backend with the bound (see ``benchsite.bounded``)."""

from django.db.backends.mysql import base

from .. import bound

DatabaseWrapper = bound(base.DatabaseWrapper)

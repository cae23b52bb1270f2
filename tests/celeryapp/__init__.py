"""A Celery worker's Django project for tests/test_celery_worker.py: tasks that use the ORM,
``atomic()`` and raw cursors against the suite's real database, with a Redis broker.

Run as ``celery -A tests.celeryapp.worker worker`` from the repository root, with:

DATABASE_URL              the database: ``pgpool://`` or ``mysqlpool://`` (django_dbpool's
                          ENGINEs; pool options as ``pool_*`` query parameters, as in
                          ``?pool_max_size=2&pool_lease=transaction``), or ``postgres://``
                          for Django's own PostgreSQL backend
DBPOOL_NATIVE_POOL_SIZE   with ``postgres://``: Django's native pool (``OPTIONS["pool"]``)
                          with ``min_size`` 0 and this ``max_size``
DBPOOL_TEST_REDIS_URL     the broker, also the result backend
DBPOOL_STATS_DIR          where the processes publish their pool stats
"""

"""gunicorn settings for the example project (``gunicorn -c example_project/gunicorn.conf.py``)."""

from django_dbpool.shutdown import gunicorn_worker_exit

worker_class = "gthread"
workers = 2
threads = 4
# Drain the worker's pools as it exits, whatever path the exit takes.
worker_exit = gunicorn_worker_exit

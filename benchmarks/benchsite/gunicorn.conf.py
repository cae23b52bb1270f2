"""gunicorn for the HTTP benchmarks: 2 workers x 8 gthread threads, no access log."""

worker_class = "gthread"
workers = 2
threads = 8
keepalive = 30
accesslog = None
loglevel = "warning"

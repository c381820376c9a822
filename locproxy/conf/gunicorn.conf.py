"""gunicorn settings for the locproxy sidecar (``locproxy serve`` uses them):
gunicorn -c gunicorn.conf.py --paste paste.ini

Downloads are long blocking streams: the threaded worker gives each one a
thread. Keep the proxy's pool_maxsize and backend_pool_maxsize >= threads.
"""

import multiprocessing
import os

bind = os.environ.get("LOCPROXY_BIND", "127.0.0.1:9393")
worker_class = "gthread"
workers = int(os.environ.get("LOCPROXY_WORKERS", multiprocessing.cpu_count()))
threads = int(os.environ.get("LOCPROXY_THREADS", 32))
# gthread workers heartbeat from their main loop, so long downloads do not
# trip this; it only catches a worker that stopped working.
timeout = 60
graceful_timeout = 30
keepalive = 5


def child_exit(server, worker):
    """With PROMETHEUS_MULTIPROC_DIR set, forget a dead worker's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

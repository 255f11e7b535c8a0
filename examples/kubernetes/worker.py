r"""A worker reading its database credentials from a Kubernetes Secret volume.

Every WORKER_INTERVAL seconds (default 1) it runs a query on a SQLAlchemy
engine (psycopg2) and prints the session user: ``my_app_tom``, then
``my_app_jerry`` once the Secret is updated mid-rotation, without a restart.
``CredentialsProvider.from_file`` stats the file at each pool checkout; the
kubelet updates a Secret volume by swapping its ``..data`` symlink, which
changes the file's inode, so the new document is read and the pooled
connection is replaced by one logged in as the newly preferred member.

Run (``pip install rolekit``; see deployment.yaml and README.md)::

    ROLEKIT_CREDENTIALS_FILE=/etc/rolekit/credentials.json \
    ROLEKIT_FAMILY=my_app ROLEKIT_CONTEXT=prod \
    APP_DATABASE_URL=postgresql://db:5432/app python worker.py

It runs until SIGTERM (the pod stops), or for WORKER_SECONDS if set.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

from sqlalchemy import text

from rolekit.client import CredentialsProvider, create_engine


def main() -> None:
    # rolekit.client logs which member it prefers, refreshes and fallbacks; never a password
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = os.environ.get("ROLEKIT_CREDENTIALS_FILE", "/etc/rolekit/credentials.json")
    url = os.environ.get("APP_DATABASE_URL", "postgresql://127.0.0.1:5432/postgres")
    interval = float(os.environ.get("WORKER_INTERVAL", "1"))
    seconds = float(os.environ.get("WORKER_SECONDS", "0")) or float("inf")
    # read once now, so a missing or invalid file, or another family's or
    # context's document, fails at start-up, not at the first query
    provider = CredentialsProvider.from_file(
        path,
        family=os.environ.get("ROLEKIT_FAMILY", "my_app"),
        context=os.environ.get("ROLEKIT_CONTEXT", "prod"),
    )
    engine = create_engine(url, provider, pool_size=2)  # the URL carries no user or password
    # Kubernetes stops a pod with SIGTERM: leave the loop, close the pool's sessions
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                print(conn.scalar(text("SELECT session_user")), flush=True)
            time.sleep(interval)
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()

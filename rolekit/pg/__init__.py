"""PostgreSQL: everything rolekit reads from and sends to one server.

Catalog reads (:mod:`~rolekit.pg.catalog`, :mod:`~rolekit.pg.family_catalog`),
the role statements (:mod:`~rolekit.pg.ddl`), the migration session and the
control connection beside it (:mod:`~rolekit.pg.session`,
:mod:`~rolekit.pg.control`), log safety, claims, login tracking, logins as
the members, and the database's own record of how far each rotation went
(:mod:`~rolekit.pg.positions`, :mod:`~rolekit.pg.password_history`).
"""

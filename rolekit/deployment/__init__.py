"""The whole deployment of one database: its standbys, its poolers, who uses a member.

The drain (:mod:`~rolekit.deployment.drain`) watches every place a member
can be used (:mod:`~rolekit.deployment.usage`): sessions on the primary and
on each configured standby (:mod:`~rolekit.deployment.replicas`), PgBouncer
clients (:mod:`~rolekit.deployment.poolers`) and tracked logins, gathered in
one :class:`~rolekit.deployment.deployment.Deployment`.
"""

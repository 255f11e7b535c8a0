"""The project's own files, read without Alembic or a database.

``alembic.ini``'s ``[rolekit]`` section and the ``ROLEKIT_*`` overrides
(:mod:`~rolekit.project.config`), the committed rotation state
(:mod:`~rolekit.project.state`), and the credentials document that
``rolekit creds`` hands to applications (:mod:`~rolekit.project.credentials`,
:mod:`~rolekit.project.document`).
"""

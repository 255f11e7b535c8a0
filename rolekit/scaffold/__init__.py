"""``rolekit init``: add rolekit to an existing Alembic project.

It writes what a project needs (env.py's two lines, ``[rolekit]`` in
alembic.ini, the repeatables folder, an empty ``rotation.json``, ignore
rules for the secrets file, ``passwords.env.example``) and, for
``--family``, a first revision, the family's repeatables and its rotation
state.  It is idempotent, and it never replaces what the user wrote without
``--force``: a conflict stops it before any write.

Modules: ``_project`` (planning and applying), ``_envpy`` (env.py),
``_family`` (``--family``: repeatables, revision, rotation state),
``_content`` (the text written), ``_changes`` (one file's change and diff).
"""

from rolekit.scaffold._changes import Action, FileChange
from rolekit.scaffold._family import DEFAULT_CONTEXTS, FamilySpec
from rolekit.scaffold._project import InitReport, init_project, plan_init

__all__ = [
    "DEFAULT_CONTEXTS",
    "Action",
    "FamilySpec",
    "FileChange",
    "InitReport",
    "init_project",
    "plan_init",
]

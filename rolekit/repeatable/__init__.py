"""Repeatable ("run-on-change") operations and their changelog.

Declare them in ``migrations/repeatable/*.py`` as a module-level
``REPEATABLES`` list::

    from rolekit.repeatable import FamilyLogin, SetPasswords, SqlFile

    REPEATABLES = [
        SetPasswords("set_passwords_prod", ["my_app_tom", "my_app_jerry"], context="prod"),
        SqlFile("grant_permissions_to_my_app", "my_app_grants.sql", targets=["my_app"]),
        FamilyLogin("allow_login_for_my_app", "my_app", ["my_app_tom", "my_app_jerry"]),
    ]
"""

from rolekit.repeatable.base import Repeatable
from rolekit.repeatable.kinds import FamilyLogin, SetLogin, SetPasswords, Sql, SqlFile

__all__ = ["FamilyLogin", "Repeatable", "SetLogin", "SetPasswords", "Sql", "SqlFile"]

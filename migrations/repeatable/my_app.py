"""The seeds' Liquibase changesets as rolekit repeatables.

* ``set_passwords_dev`` / ``set_passwords_prod``: run on change of a password
  in the context's secrets file (keys ``<role>.password.<context>``);
* ``grant_permissions_to_my_app``: run on change of ``my_app_grants.sql``;
* ``allow_login_for_my_app``: applies ``migrations/rotation.json`` with the
  lockout, password and drain guards.
"""

from rolekit.repeatable import FamilyLogin, SetPasswords, SqlFile

MEMBERS = ["my_app_tom", "my_app_jerry"]

REPEATABLES = [
    SetPasswords("set_passwords_dev", MEMBERS, context="dev or local"),
    SetPasswords("set_passwords_prod", MEMBERS, context="prod"),
    SqlFile("grant_permissions_to_my_app", "my_app_grants.sql", targets=["my_app"]),
    FamilyLogin("allow_login_for_my_app", "my_app", MEMBERS),
]

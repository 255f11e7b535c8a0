"""What rolekit manages, as plain values: role names, contexts, families, durations.

No I/O and no database: every other package builds on these rules, so each
rule (a role name, a context expression, a family's two members, ``90d``)
lives in exactly one place.
"""

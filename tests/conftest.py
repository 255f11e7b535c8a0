"""Fixtures come from plugin modules, so no conftest imports another."""

pytest_plugins = [
    "tests.plugins.hermetic",
    "tests.plugins.postgres",
    "tests.plugins.reliability",
    "tests.plugins.deployment",
]

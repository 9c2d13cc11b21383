"""Shared pytest plugins: fixtures that start real services for the session."""

pytest_plugins = ["labelstudio_fixture", "drafting_fixtures", "disk_fixtures"]

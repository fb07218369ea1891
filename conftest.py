"""Shared pytest configuration for the whole workspace (platform, services, cross-service tests)."""

pytest_plugins = ["cityos_platform.testing.fixtures", "cityos_platform.testing.s3"]

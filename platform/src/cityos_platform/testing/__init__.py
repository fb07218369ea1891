"""Test support shipped with the platform: the conformance service and pytest fixtures.

Services and the cross-service suite load the fixtures with
`pytest_plugins = ["cityos_platform.testing.fixtures"]` (the root conftest.py does).
"""

from cityos_platform.migrate import run_env

run_env()

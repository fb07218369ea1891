"""CityOS shared runtime (`cityos-platform`).

Configuration, the gRPC server bootstrap with its interceptor chain, errors, telemetry, structured
logging, the service registry (entry points) and the `cityos` command. It never imports a service.
"""

__version__ = "0.1.0"

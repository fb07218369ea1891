"""CityOS datashare: the catalog, agreements enforced on every read, signed receipts, open data and the
NGSI-LD HTTP view (docs/services/datashare.md)."""

from cityos_platform.registry import ServiceDefinition

SERVICE = ServiceDefinition(
    name="datashare",
    dev_port=50066,
    dev_http_port=50076,
    factory="cityos_datashare.app:create",
    description="datashare: catalog, agreements, enforced queries and exports, receipts, open data, NGSI-LD",
)

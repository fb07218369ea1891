"""Fixtures for the manholes service: a running service on SQLite and on PostgreSQL, and callers."""

from __future__ import annotations

import grpc
import pytest

from cityos.common.v1 import resources_pb2
from cityos.manholes.v1 import manholes_pb2, manholes_pb2_grpc
from cityos_manholes.app import ManholesApp
from cityos_platform.config import load_settings
from cityos_platform.testing.fixtures import bearer

CENTER = (39.05, 115.95)


class Street:
    """A running manholes service and ready-made callers."""

    def __init__(self, server, app, channel, mint):
        self.server, self.app, self.channel, self._mint = server, app, channel, mint
        self.covers = manholes_pb2_grpc.CoverServiceStub(channel)
        self.operator = self.token("users/wei", "drainage", "operator")
        self.other_org = self.token("users/uma", "utilities", "operator")
        # The analytics job's service account, and another service's.
        self.analytics = bearer(
            mint("service-account-cityos-analytics", "city", ["service"], client="cityos-analytics")
        )
        self.parking_service = bearer(
            mint("service-account-cityos-parking", "city", ["service"], client="cityos-parking")
        )

    def token(self, subject, organization, *roles):
        return bearer(self._mint(subject, organization, list(roles)))

    @staticmethod
    def cover_message(**fields) -> manholes_pb2.Cover:
        offset = fields.pop("offset", 0.0)
        return manholes_pb2.Cover(
            display_name=fields.pop("display_name", "XA-0001"),
            kind=fields.pop("kind", manholes_pb2.COVER_KIND_SEWER),
            location=resources_pb2.GeoPoint(latitude=CENTER[0], longitude=CENTER[1] + offset),
            road_class=fields.pop("road_class", manholes_pb2.ROAD_CLASS_ARTERIAL),
            **fields,
        )

    async def cover(self, cover_id="xa-0001", *, metadata=None, **fields):
        return await self.covers.CreateCover(
            manholes_pb2.CreateCoverRequest(cover=self.cover_message(**fields), cover_id=cover_id),
            metadata=metadata or self.operator,
            timeout=10,
        )


@pytest.fixture
async def street(start_server, database_url, mint, tmp_path):
    app = ManholesApp(load_settings(var_dir=tmp_path, events_poll_interval_s=0.1), database_url=database_url)
    mounts = await app.start()
    server = await start_server(mounts)
    channel = grpc.aio.insecure_channel(server.address)
    yield Street(server, app, channel, mint)
    await channel.close()
    await server.stop(grace=0)  # no handler is left running on a closed database
    await app.stop()

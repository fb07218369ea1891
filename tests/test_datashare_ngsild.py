"""DSH-6: the NGSI-LD HTTP API (`cityos_datashare.http`) serves the domain services' entities under the
caller's agreements — the real parking and streetlights services, called over gRPC as datashare with a
`service` token, entities in two districts (rongdong, rongxi), agreements written straight into a
datashare database (SQLite: the agreements' own life cycle is test_agreements.py's subject).

What the entities look like is checked against the Smart Data Models schemas of ../shared/domain (or,
in a clone without it, the copies the parking and streetlights tests keep and compare with it)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import h3
import pytest
from aiohttp import web
from sqlalchemy import select, update

from cityos.common.v1 import resources_pb2
from cityos.datashare.v1 import datashare_pb2 as pb
from cityos.parking.v1 import parking_pb2, parking_pb2_grpc
from cityos.streetlights.v1 import inventory_pb2 as inv
from cityos.streetlights.v1 import inventory_pb2_grpc
from cityos_datashare.http import (
    BAD_REQUEST_DATA,
    ENTITIES_PATH,
    INTERNAL_ERROR,
    PERMISSION_DENIED,
    RESOURCE_NOT_FOUND,
    SERVICE_UNAVAILABLE,
    UNAUTHENTICATED,
    HttpServer,
    NgsiLdGateway,
    parse_q,
)
from cityos_datashare.live import LIVE_VIEWS
from cityos_datashare.models import AgreementRow, Base, ReceiptRow
from cityos_datashare.receipts import AccessRecord, ReceiptLog, ReceiptSigner
from cityos_datashare.settings import DatashareSettings
from cityos_datashare.terms import Terms
from cityos_parking import ngsild as parking_ngsild
from cityos_parking.app import ParkingApp
from cityos_platform.areas import AreaRegistry
from cityos_platform.clock import ManualClock
from cityos_platform.config import load_settings
from cityos_platform.db import Database, sqlite_url
from cityos_platform.migrate import PLATFORM_CHAIN, service_chain, upgrade
from cityos_platform.peers import bearer_interceptors
from cityos_platform.testing.fixtures import authenticator_for, bearer
from cityos_platform.testing.ngsild import SmartDataModels, normalized_problems
from cityos_streetlights.app import StreetlightsApp

CHAIN = service_chain("cityos_datashare", Base.metadata)
ROOT = Path(__file__).parents[1]
SHARED = ROOT / ".." / "shared" / "domain" / "smart-data-models"
VENDORED = (
    ROOT / "services" / "parking" / "tests" / "smart-data-models",
    ROOT / "services" / "streetlights" / "tests" / "smart-data-models",
)
MODELS = [SmartDataModels(SHARED)] if SHARED.is_dir() else [SmartDataModels(path) for path in VENDORED]

RONGDONG = (39.008, 115.955)
RONGXI = (39.0, 115.9)
ECOLOGY = "ecology-bureau"
LD_JSON = "application/ld+json"
URN = "urn:ngsi-ld:"


def schema_errors(entity: dict[str, Any]) -> list[str]:
    for models in MODELS:
        if (models.folder / entity["type"] / "schema.json").is_file():
            return models.schema_errors(entity)
    raise AssertionError(f"no Smart Data Model {entity['type']} in {[m.folder for m in MODELS]}")


def point(at: tuple[float, float], east: float = 0.0) -> resources_pb2.GeoPoint:
    return resources_pb2.GeoPoint(latitude=at[0], longitude=at[1] + east)


class StaticToken:
    """The token source the bearer interceptors ask (datashare's client credentials in production)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token


# -- the city: parking and streetlights running, a datashare database, the gateway over HTTP ----------------


@dataclass
class City:
    url: str
    http: aiohttp.ClientSession
    db: Database
    clock: ManualClock
    mint: Callable[..., str]
    channels: dict[str, grpc.aio.Channel]
    records: list[AccessRecord] = field(default_factory=list)

    def token(self, organization: str, *roles: str, subject: str = "") -> str:
        return self.mint(subject or f"users/{organization}-reader", organization, list(roles or ["analyst"]))

    async def get(
        self, path: str, token: str | None, accept: str = LD_JSON, **params: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {"Accept": accept}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.get(self.url + path, headers=headers, params=params) as response:
            return response.status, json.loads(await response.text()), response

    async def entities(self, token: str | None, **params: Any) -> tuple[int, Any]:
        status, body, _ = await self.get(ENTITIES_PATH, token, **params)
        return status, body

    async def entity(self, entity_id: str, token: str | None, **params: Any) -> tuple[int, Any]:
        status, body, _ = await self.get(f"{ENTITIES_PATH}/{entity_id}", token, **params)
        return status, body

    async def agree(
        self,
        agreement_id: str,
        dataset_id: str,
        columns: list[str],
        *,
        areas: tuple[str, ...] = (),
        consumer: str = ECOLOGY,
        owner: str = "transport",
        expire_in: timedelta = timedelta(days=30),
        state: int = pb.AGREEMENT_STATE_APPROVED,
        min_group_size: int = 0,
        window: tuple[datetime, datetime] | None = None,
    ) -> None:
        now = self.clock.now()
        terms = Terms(
            columns=tuple(columns),
            areas=areas,
            expire_time=now + expire_in,
            min_group_size=min_group_size,
            window_start=window[0] if window else None,
            window_end=window[1] if window else None,
        )
        async with self.db.transaction() as tx:
            tx.session.add(
                AgreementRow(
                    agreement_id=agreement_id,
                    dataset_id=dataset_id,
                    consumer_organization=consumer,
                    owner_organization=owner,
                    purpose=f"air-quality study {agreement_id}",
                    requested_terms=terms.to_json(),
                    terms=terms.to_json(),
                    state=state,
                    expire_time=terms.expire_time,
                    requester=f"users/{consumer}-lead",
                    create_time=now,
                    update_time=now,
                    etag="e1",
                )
            )


async def _parking(channel: grpc.aio.Channel, operator: Any) -> None:
    """Two on-street sites (rongdong, rongxi), a garage in rongdong, a group, three spots."""
    stub = parking_pb2_grpc.ParkingServiceStub(channel)
    tariff = parking_pb2.Tariff(price_per_minute="0.05", currency="CNY", time_zone="Asia/Shanghai")
    for site_id, at, kind in (
        ("east", RONGDONG, parking_pb2.SITE_KIND_ON_STREET),
        ("west", RONGXI, parking_pb2.SITE_KIND_ON_STREET),
        ("garage", (RONGDONG[0] + 0.001, RONGDONG[1]), parking_pb2.SITE_KIND_OFF_STREET),
    ):
        site = parking_pb2.Site(
            display_name=site_id.title(),
            kind=kind,
            location=point(at),
            detection_type=parking_pb2.DETECTION_TYPE_SINGLE_SPACE
            if kind == parking_pb2.SITE_KIND_ON_STREET
            else parking_pb2.DETECTION_TYPE_BALANCING,
            allowed_vehicle_types=["car"],
            tariff=tariff,
            capacity=0 if kind == parking_pb2.SITE_KIND_ON_STREET else 120,
        )
        await stub.CreateSite(parking_pb2.CreateSiteRequest(site=site, site_id=site_id), metadata=operator)
    group = await stub.CreateGroup(
        parking_pb2.CreateGroupRequest(
            group=parking_pb2.Group(display_name="East north", site="sites/east", categories=["residents"]),
            group_id="east-north",
        ),
        metadata=operator,
    )
    for spot_id, site, at, east, group_name in (
        ("e-1", "sites/east", RONGDONG, 0.0001, group.name),
        ("e-2", "sites/east", RONGDONG, 0.0002, ""),
        ("w-1", "sites/west", RONGXI, 0.0001, ""),
    ):
        spot = parking_pb2.Spot(
            display_name=spot_id.upper(),
            site=site,
            location=point(at, east),
            group=group_name,
            sensor=f"devices/pk-{spot_id}",
            width_m=2.5,
            length_m=5,
        )
        await stub.CreateSpot(parking_pb2.CreateSpotRequest(spot=spot, spot_id=spot_id), metadata=operator)
    for name, status in (
        ("spots/e-1", parking_pb2.SPOT_STATUS_OCCUPIED),
        ("spots/w-1", parking_pb2.SPOT_STATUS_FREE),
    ):
        await stub.SetSpotStatus(
            parking_pb2.SetSpotStatusRequest(name=name, status=status), metadata=operator
        )


async def _streetlights(channel: grpc.aio.Channel, operator: Any) -> None:
    """A cabinet and a group in rongdong, one light in rongdong and one in rongxi."""
    stub = inventory_pb2_grpc.InventoryServiceStub(channel)
    await stub.CreateLightModel(
        inv.CreateLightModelRequest(
            light_model=inv.LightModel(
                display_name="LED 60 W", lamp_technology=inv.LAMP_TECHNOLOGY_LED, rated_power_w=60
            ),
            light_model_id="led-60",
        ),
        metadata=operator,
    )
    await stub.CreateCabinet(
        inv.CreateCabinetRequest(
            cabinet=inv.Cabinet(
                display_name="CAB-1", location=point(RONGDONG), working_mode=inv.WORKING_MODE_AUTOMATIC
            ),
            cabinet_id="cab-1",
        ),
        metadata=operator,
    )
    await stub.CreateGroup(
        inv.CreateGroupRequest(group=inv.Group(display_name="G-1", cabinet="cabinets/cab-1"), group_id="g-1"),
        metadata=operator,
    )
    for light_id, at in (("sl-1", RONGDONG), ("sl-2", RONGXI)):
        light = inv.Light(
            display_name=light_id.upper(),
            location=point(at, 0.0003),
            model="lightModels/led-60",
            group="groups/g-1",
            pole_number=f"P-{light_id[-1]}",
        )
        await stub.CreateLight(inv.CreateLightRequest(light=light, light_id=light_id), metadata=operator)


Started = Callable[..., Awaitable[City]]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
async def city(start_server, mint, dev_issuer, tmp_path, clock) -> AsyncIterator[Started]:  # type: ignore[no-untyped-def]
    """`await city(**gateway_options)`: everything running; torn down at the end."""
    stack: list[Callable[[], Awaitable[Any]]] = []

    async def start(**options: Any) -> City:
        parking = ParkingApp(
            load_settings(var_dir=tmp_path / "parking", events_poll_interval_s=0.1),
            database_url=sqlite_url(tmp_path / "parking.sqlite"),
            run_tasks=False,
        )
        parking_server = await start_server(await parking.start())
        streetlights = StreetlightsApp(
            load_settings(var_dir=tmp_path / "streetlights", events_poll_interval_s=0.1),
            database_url=sqlite_url(tmp_path / "streetlights.sqlite"),
            run_tasks=False,
        )
        streetlights_server = await start_server(await streetlights.start())
        # Each service's server stops before the service (no handler left running on a closed database).
        stack.extend(
            [
                parking.stop,
                lambda: parking_server.stop(grace=0),
                streetlights.stop,
                lambda: streetlights_server.stop(grace=0),
            ]
        )
        # What the services' own operators create, over their APIs.
        async with grpc.aio.insecure_channel(parking_server.address) as channel:
            await _parking(channel, bearer(mint("users/olga", "transport", ["operator"])))
        async with grpc.aio.insecure_channel(streetlights_server.address) as channel:
            await _streetlights(channel, bearer(mint("users/li", "public-works", ["operator"])))
        # Datashare's channels: every call carries its `service` token.
        service_token = StaticToken(mint("service-account-cityos-datashare", "city", ["service"]))
        channels = {
            "parking": grpc.aio.insecure_channel(
                parking_server.address, interceptors=bearer_interceptors(service_token)
            ),
            "streetlights": grpc.aio.insecure_channel(
                streetlights_server.address, interceptors=bearer_interceptors(service_token)
            ),
        }
        stack.extend(channel.close for channel in channels.values())
        dead = options.pop("unreachable", None)
        if dead is not None:  # a port nobody listens on
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            channels[dead] = grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", interceptors=bearer_interceptors(service_token)
            )
            stack.append(channels[dead].close)
        url = sqlite_url(tmp_path / "datashare.sqlite")
        await upgrade(url, [PLATFORM_CHAIN, CHAIN])
        db = Database(url, source="datashare", clock=clock)
        stack.append(db.close)
        records: list[AccessRecord] = []

        async def remember(record: AccessRecord) -> None:
            records.append(record)

        gateway = NgsiLdGateway(
            db,
            AreaRegistry.default(),
            authenticator_for(dev_issuer),
            channels,
            options.pop("record", remember),
            clock=clock,
            **options,
        )
        server = HttpServer("127.0.0.1", 0)
        server.app.add_routes(gateway.routes())
        base = await server.start()
        stack.append(server.stop)
        http = aiohttp.ClientSession()
        stack.append(http.close)
        return City(base, http, db, clock, mint, channels, records)

    yield start
    for close in reversed(stack):
        await close()


# -- what the owner sees ------------------------------------------------------------------------------------

OWNERS = {"parking": "transport", "streetlights": "public-works"}
EXPECTED = {
    "OnStreetParking": ["east", "west"],
    "OffStreetParking": ["garage"],
    "ParkingGroup": ["east-north"],
    "ParkingSpot": ["e-1", "e-2", "w-1"],
    "Streetlight": ["sl-1", "sl-2"],
    "StreetlightGroup": ["g-1"],
    "StreetlightControlCabinet": ["cab-1"],
}


@pytest.mark.req("DSH-6")
async def test_the_owner_reads_every_entity_and_they_validate_against_the_smart_data_models(city):
    town = await city()
    for view in LIVE_VIEWS:
        owner = town.token(OWNERS[view.service], "analyst")
        status, key_values = await town.entities(owner, type=view.entity_type, options="keyValues")
        assert status == 200, key_values
        ids = [f"{URN}{view.entity_type}:{local}" for local in EXPECTED[view.entity_type]]
        assert [entity["id"] for entity in key_values] == ids
        status, normalized = await town.entities(owner, type=view.entity_type)
        assert status == 200
        for simple, full in zip(key_values, normalized, strict=True):
            assert schema_errors(simple) == [], simple["id"]
            assert normalized_problems(full) == [], full["id"]
            assert parking_ngsild.reduce(full) == simple
            # Every attribute the service emits is a field of the view (what agreements can name).
            assert set(simple) - {"id", "type", "@context"} <= view.field_names, view.entity_type
        # One entity by id, both forms.
        status, one = await town.entity(ids[0], owner, options="keyValues")
        assert (status, one) == (200, key_values[0])
        status, one = await town.entity(ids[0], owner)
        assert (status, one) == (200, normalized[0])
    # Each read left one receipt, with no agreement: the owner's own access.
    assert len(town.records) == 4 * len(LIVE_VIEWS)
    spots = [r for r in town.records if r.dataset_id == "ngsi-ld.ParkingSpot"]
    assert {(r.agreement_id, r.purpose, r.owner_organization, r.consumer_organization) for r in spots} == {
        ("", "owner access", "transport", "transport")
    }
    assert [r.row_count for r in spots] == [3, 3, 1, 1]
    assert all(r.kind == pb.ACCESS_KIND_NGSI_LD and r.completed for r in town.records)
    assert "status" in spots[0].columns
    assert "refDevice" in spots[0].columns


@pytest.mark.req("DSH-6")
async def test_a_city_wide_role_reads_everything_and_another_owner_does_not(city):
    town = await city()
    admin = town.token("city", "city-admin")
    status, lights = await town.entities(admin, type="Streetlight", options="keyValues")
    assert status == 200
    assert [light["id"] for light in lights] == [f"{URN}Streetlight:sl-1", f"{URN}Streetlight:sl-2"]
    assert town.records[-1].purpose == "city-wide role"
    assert town.records[-1].owner_organization == "public-works"
    # Parking's owner owns no streetlights.
    status, problem = await town.entities(town.token("transport", "operator"), type="Streetlight")
    assert status == 403
    assert problem["type"] == PERMISSION_DENIED


# -- agreements ---------------------------------------------------------------------------------------------


@pytest.mark.req("DSH-6")
async def test_an_agreement_serves_only_the_entities_in_its_areas_and_only_its_columns(city):
    town = await city()
    await town.agree(
        "a-spots", "ngsi-ld.ParkingSpot", ["status", "location", "category"], areas=("rongdong",)
    )
    reader = town.token(ECOLOGY, "analyst", subject="users/eve")
    status, spots = await town.entities(reader, type="ParkingSpot", options="keyValues")
    assert status == 200
    assert [spot["id"] for spot in spots] == [f"{URN}ParkingSpot:e-1", f"{URN}ParkingSpot:e-2"]
    for spot in spots:
        assert set(spot) == {"id", "type", "status", "location", "category", "@context"}
        lng, lat = spot["location"]["coordinates"]
        assert AreaRegistry.default().get("rongdong").contains(lat, lng)
    assert spots[0]["status"] == "occupied"
    status, normalized = await town.entities(reader, type="ParkingSpot")
    assert status == 200
    assert [set(spot) for spot in normalized] == [
        {"id", "type", "status", "location", "category", "@context"}
    ] * 2
    assert all(normalized_problems(spot) == [] for spot in normalized)
    assert "observedAt" in normalized[0]["status"]
    # The receipt: who, under which agreement, which columns, how many entities.
    receipt = town.records[0]
    assert receipt == AccessRecord(
        subject="users/eve",
        consumer_organization=ECOLOGY,
        owner_organization="transport",
        dataset_id="ngsi-ld.ParkingSpot",
        agreement_id="a-spots",
        purpose="air-quality study a-spots",
        columns=("category", "location", "status"),
        row_count=2,
        query_hash=receipt.query_hash,
        kind=pb.ACCESS_KIND_NGSI_LD,
        completed=True,
    )
    assert len(receipt.query_hash) == 64
    assert town.records[1].query_hash != receipt.query_hash  # another request (no keyValues)
    # q on a granted attribute; attrs narrows further.
    status, occupied = await town.entities(
        reader, type="ParkingSpot", q="status==occupied", options="keyValues"
    )
    assert (status, [spot["id"] for spot in occupied]) == (200, [f"{URN}ParkingSpot:e-1"])
    status, narrow = await town.entities(reader, type="ParkingSpot", attrs="status,name", options="keyValues")
    assert status == 200
    assert [set(spot) for spot in narrow] == [{"id", "type", "status", "@context"}] * 2
    # The agreement is about spots: nothing else.
    status, problem = await town.entities(reader, type="OnStreetParking")
    assert (status, problem["type"]) == (403, PERMISSION_DENIED)


@pytest.mark.req("DSH-6")
async def test_agreements_on_several_areas_add_up_and_record_each_under_its_own(city):
    town = await city()
    await town.agree("b-west", "ngsi-ld.ParkingSpot", ["status", "name"], areas=("rongxi",))
    cell = h3.latlng_to_cell(RONGDONG[0], RONGDONG[1] + 0.0001, 9)  # e-1's cell
    in_cell = [
        spot
        for spot, east in (("e-1", 0.0001), ("e-2", 0.0002))
        if h3.latlng_to_cell(RONGDONG[0], RONGDONG[1] + east, 9) == cell
    ]
    await town.agree("a-east", "ngsi-ld.ParkingSpot", ["status"], areas=(f"h3:{cell}",))
    reader = town.token(ECOLOGY)
    status, spots = await town.entities(reader, type="ParkingSpot", options="keyValues")
    assert status == 200
    by_id = {spot["id"].rsplit(":", 1)[1]: set(spot) - {"id", "type", "@context"} for spot in spots}
    assert by_id == {"w-1": {"status", "name"}, **{spot: {"status"} for spot in in_cell}}
    records = {record.agreement_id: record for record in town.records}
    assert len(town.records) == 2
    assert (records["b-west"].row_count, records["b-west"].columns) == (1, ("name", "status"))
    assert (records["a-east"].row_count, records["a-east"].columns) == (len(in_cell), ("status",))
    # name is readable under b-west only: a filter on it cannot reveal e-1's name.
    status, named = await town.entities(reader, type="ParkingSpot", q='name=="E-1"')
    assert (status, named) == (200, [])
    status, named = await town.entities(reader, type="ParkingSpot", q="name==W-1", options="keyValues")
    assert [spot["id"] for spot in named] == [f"{URN}ParkingSpot:w-1"]


@pytest.mark.req("DSH-6")
async def test_filtering_on_an_attribute_not_granted_is_refused(city):
    town = await city()
    await town.agree("a-spots", "ngsi-ld.ParkingSpot", ["status", "location"], areas=("rongdong",))
    reader = town.token(ECOLOGY)
    for q in ('name=="E-1"', "status==occupied;refDevice!=x"):
        status, problem = await town.entities(reader, type="ParkingSpot", q=q)
        assert status == 400
        assert problem["type"] == BAD_REQUEST_DATA
        assert ("name" if "name" in q else "refDevice") in problem["detail"]
    assert town.records == []  # nothing was read


@pytest.mark.req("DSH-6")
async def test_an_entity_out_of_scope_is_not_found_like_one_that_does_not_exist(city):
    town = await city()
    await town.agree("a-spots", "ngsi-ld.ParkingSpot", ["status"], areas=("rongdong",))
    reader = town.token(ECOLOGY)
    status, spot = await town.entity(f"{URN}ParkingSpot:e-2", reader, options="keyValues")
    assert status == 200
    assert set(spot) == {"id", "type", "status", "@context"}
    status, hidden = await town.entity(f"{URN}ParkingSpot:w-1", reader)
    status_missing, missing = await town.entity(f"{URN}ParkingSpot:nowhere", reader)
    assert status == status_missing == 404
    assert hidden["type"] == missing["type"] == RESOURCE_NOT_FOUND
    assert hidden["detail"].replace("w-1", "X") == missing["detail"].replace("nowhere", "X")
    assert [record.row_count for record in town.records] == [1]


@pytest.mark.req("DSH-6")
async def test_without_an_agreement_in_force_access_is_refused(city):
    town = await city()
    status, problem = await town.entities(None, type="ParkingSpot")
    assert (status, problem["type"]) == (401, UNAUTHENTICATED)
    status, problem = await town.entities("not-a-token", type="ParkingSpot")
    assert (status, problem["type"]) == (401, UNAUTHENTICATED)
    stranger = town.token("utilities", "operator")
    for path in (ENTITIES_PATH, f"{ENTITIES_PATH}/{URN}ParkingSpot:e-1"):
        status, problem, _ = await town.get(
            path, stranger, **({"type": "ParkingSpot"} if "Spot:" not in path else {})
        )
        assert (status, problem["type"]) == (403, PERMISSION_DENIED)
        assert "ngsi-ld.ParkingSpot" in problem["detail"]
    # An agreement still pending, and one with an aggregation floor, give no row-level access either.
    await town.agree("p-requested", "ngsi-ld.ParkingSpot", ["status"], state=pb.AGREEMENT_STATE_REQUESTED)
    status, _ = await town.entities(town.token(ECOLOGY), type="ParkingSpot")
    assert status == 403
    await town.agree("g-grouped", "ngsi-ld.ParkingSpot", ["status"], min_group_size=5)
    status, problem = await town.entities(town.token(ECOLOGY), type="ParkingSpot")
    assert status == 403
    assert "aggregated" in problem["detail"]
    # A live view's rows are the present: a window that has ended admits nothing.
    ended = (town.clock.now() - timedelta(days=10), town.clock.now() - timedelta(days=1))
    await town.agree("w-window", "ngsi-ld.ParkingSpot", ["status"], window=ended)
    status, problem = await town.entities(town.token(ECOLOGY), type="ParkingSpot")
    assert status == 403
    assert "time window" in problem["detail"]
    assert town.records == []


@pytest.mark.req("DSH-6")
async def test_a_revoked_or_expired_agreement_stops_access(city):
    town = await city()
    await town.agree("a-revoked", "ngsi-ld.ParkingSpot", ["status"])
    reader = town.token(ECOLOGY)
    status, spots = await town.entities(reader, type="ParkingSpot")
    assert (status, len(spots)) == (200, 3)
    async with town.db.transaction() as tx:
        await tx.session.execute(
            update(AgreementRow)
            .where(AgreementRow.agreement_id == "a-revoked")
            .values(state=pb.AGREEMENT_STATE_REVOKED)
        )
    status, problem = await town.entities(reader, type="ParkingSpot")
    assert (status, problem["type"]) == (403, PERMISSION_DENIED)
    status, _ = await town.entity(f"{URN}ParkingSpot:e-1", reader)
    assert status == 403
    # Approved, but it ends: read until its expire time, refused after (the sweep need not run).
    await town.agree("b-expiring", "ngsi-ld.ParkingSpot", ["status"], expire_in=timedelta(hours=1))
    status, _ = await town.entity(f"{URN}ParkingSpot:e-1", reader)
    assert status == 200
    town.clock.advance(3601)
    status, problem = await town.entity(f"{URN}ParkingSpot:e-1", reader)
    assert (status, problem["type"]) == (403, PERMISSION_DENIED)


@pytest.mark.req("DSH-6")
async def test_groups_are_placed_by_their_site_and_streetlights_by_their_pole(city):
    town = await city()
    await town.agree("a-groups", "ngsi-ld.ParkingGroup", ["name", "totalSpotNumber"], areas=("rongdong",))
    await town.agree(
        "b-lights",
        "ngsi-ld.Streetlight",
        ["status", "streetPoleNum"],
        areas=("rongxi",),
        owner="public-works",
    )
    await town.agree("c-groups", "ngsi-ld.ParkingGroup", ["name"], areas=("rongxi",), consumer="water-board")
    reader = town.token(ECOLOGY)
    status, groups = await town.entities(reader, type="ParkingGroup", options="keyValues")
    assert status == 200
    assert [(g["id"], g["name"], g["totalSpotNumber"]) for g in groups] == [
        (f"{URN}ParkingGroup:east-north", "East north", 1)
    ]
    status, groups = await town.entities(town.token("water-board"), type="ParkingGroup")
    assert (status, groups) == (200, [])  # its site is in rongdong
    status, lights = await town.entities(reader, type="Streetlight", options="keyValues")
    assert status == 200
    assert [(light["id"], light["streetPoleNum"], set(light)) for light in lights] == [
        (f"{URN}Streetlight:sl-2", "P-2", {"id", "type", "status", "streetPoleNum", "@context"})
    ]
    assert town.records[-1].owner_organization == "public-works"


# -- the protocol -------------------------------------------------------------------------------------------


@pytest.mark.req("DSH-6")
async def test_paging_crosses_the_services_pages_and_applies_the_scope_first(city):
    town = await city(upstream_page_size=1)
    owner = town.token("transport")
    seen = []
    for offset in range(4):
        status, page = await town.entities(
            owner, type="ParkingSpot", limit=1, offset=offset, options="keyValues"
        )
        assert status == 200
        seen += [spot["id"] for spot in page]
    assert seen == [f"{URN}ParkingSpot:{local}" for local in ("e-1", "e-2", "w-1")]
    status, everything = await town.entities(owner, type="ParkingSpot", limit=1000)
    assert (status, len(everything)) == (200, 3)
    await town.agree("a-spots", "ngsi-ld.ParkingSpot", ["status"], areas=("rongxi",))
    status, page = await town.entities(town.token(ECOLOGY), type="ParkingSpot", limit=1, offset=0)
    assert [spot["id"] for spot in page] == [f"{URN}ParkingSpot:w-1"]
    status, page = await town.entities(town.token(ECOLOGY), type="ParkingSpot", limit=1, offset=1)
    assert (status, page) == (200, [])
    for bad in ({"limit": 1001}, {"limit": 0}, {"limit": "ten"}, {"offset": -1}):
        status, problem = await town.entities(owner, type="ParkingSpot", **bad)
        assert (status, problem["type"]) == (400, BAD_REQUEST_DATA), bad


async def test_application_json_gets_no_context_and_a_link_header(city):
    town = await city()
    owner = town.token("transport")
    status, spots, response = await town.get(
        ENTITIES_PATH, owner, accept="application/json", type="ParkingSpot", options="keyValues"
    )
    assert status == 200
    assert response.content_type == "application/json"
    assert all("@context" not in spot for spot in spots)
    assert response.headers["Link"] == (
        "<https://raw.githubusercontent.com/smart-data-models/dataModel.Parking/master/context.jsonld>; "
        'rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
    )
    status, spot, response = await town.get(f"{ENTITIES_PATH}/{URN}ParkingSpot:e-1", owner)
    assert (status, response.content_type) == (200, LD_JSON)
    assert spot["@context"][0].endswith("dataModel.Parking/master/context.jsonld")
    status, problem, _ = await town.get(ENTITIES_PATH, owner, accept="text/html", type="ParkingSpot")
    assert (status, problem["type"]) == (406, "urn:cityos:errors:NotAcceptable")


async def test_requests_it_cannot_serve_are_refused_plainly(city):
    town = await city()
    owner = town.token("transport")
    for params in (
        {},
        {"type": "WeatherObserved"},
        {"type": "ParkingSpot,Streetlight"},
        {"type": "ParkingSpot", "geoQ": "near"},
        {"type": "ParkingSpot", "georel": "near;maxDistance==10"},
        {"type": "ParkingSpot", "options": "sysAttrs"},
        {"type": "ParkingSpot", "q": "status==free|status==occupied"},
        {"type": "ParkingSpot", "q": "status=~free"},
        {"type": "ParkingSpot", "attrs": "a b"},
    ):
        status, problem = await town.entities(owner, **params)
        assert status == 400, params
        assert problem["type"].startswith("https://uri.etsi.org/ngsi-ld/errors/"), params
        assert set(problem) == {"type", "title", "status", "detail"}
    for entity_id in ("e-1", "urn:ngsi-ld:e-1", f"{URN}Building:b-1"):
        status, problem = await town.entity(entity_id, owner)
        assert (status, problem["type"]) == (400, BAD_REQUEST_DATA)


async def test_an_unexpected_failure_is_500_without_internals(city):
    async def broken(record: AccessRecord) -> None:
        raise RuntimeError("secret internals: /var/lib/cityos")

    town = await city(record=broken)
    owner = town.token("transport")
    status, problem = await town.entities(owner, type="ParkingSpot")
    assert status == 500
    assert problem["type"] == INTERNAL_ERROR
    assert problem["errorId"] in problem["detail"]
    assert "secret" not in json.dumps(problem)
    assert "Traceback" not in json.dumps(problem)


async def test_a_service_not_answering_is_503_for_its_types_only(city):
    town = await city(unreachable="parking")
    owner = town.token("transport")
    for path, params in (
        (ENTITIES_PATH, {"type": "ParkingSpot"}),
        (f"{ENTITIES_PATH}/{URN}ParkingSpot:e-1", {}),
    ):
        status, problem, response = await town.get(path, owner, **params)
        assert (status, problem["type"]) == (503, SERVICE_UNAVAILABLE)
        assert response.headers["Retry-After"]
    status, _ = await town.entities(town.token("public-works"), type="Streetlight")
    assert status == 200


@pytest.mark.req("DSH-6")
async def test_every_read_lands_in_the_signed_receipt_chain(city, tmp_path):
    async def append(record: AccessRecord) -> None:
        await receipts[0].append(record)

    receipts: list[ReceiptLog] = []
    town = await city(record=append)
    receipts.append(
        ReceiptLog(town.db, ReceiptSigner.from_settings(DatashareSettings(), tmp_path, production=False))
    )
    await town.agree("a-spots", "ngsi-ld.ParkingSpot", ["status"], areas=("rongdong",))
    reader = town.token(ECOLOGY, subject="users/eve")
    assert (await town.entities(reader, type="ParkingSpot"))[0] == 200
    assert (await town.entity(f"{URN}ParkingSpot:e-1", reader))[0] == 200
    assert (await town.entities(town.token("transport"), type="OnStreetParking"))[0] == 200
    assert (await town.entity(f"{URN}ParkingSpot:w-1", reader))[0] == 404  # no receipt
    async with town.db.read() as session:
        rows = list(await session.scalars(select(ReceiptRow).order_by(ReceiptRow.sequence)))
    assert [(r.agreement_id, r.subject, r.row_count, r.columns, r.kind) for r in rows] == [
        ("a-spots", "users/eve", 2, ["status"], pb.ACCESS_KIND_NGSI_LD),
        ("a-spots", "users/eve", 1, ["status"], pb.ACCESS_KIND_NGSI_LD),
        ("", "users/transport-reader", 2, rows[2].columns, pb.ACCESS_KIND_NGSI_LD),
    ]
    assert rows[2].purpose == "owner access"
    assert "priceRatePerMinute" in rows[2].columns
    verification = await receipts[0].verify()
    assert verification.valid
    assert verification.checked == 3


# -- the q language and the listener ------------------------------------------------------------------------


def test_q_terms_compare_key_values_values():
    entity = {
        "status": "occupied",
        "width": 2.5,
        "category": ["onStreet", "free"],
        "when": "2026-01-02T03:04:05Z",
        "pole": "12",
    }

    def holds(q: str) -> bool:
        return all(term.matches(entity) for term in parse_q(q))

    assert holds("status==occupied")
    assert holds('status=="occupied"')
    assert not holds("status!=occupied")
    assert holds("width>2;width<=2.5;width>=2.5;width!=3")
    assert not holds("width<2.5")
    assert holds("category==free")
    assert not holds("category==offStreet")
    assert holds("category!=offStreet")
    assert holds('when>"2026-01-01"')
    assert not holds('when<"2026-01-01"')
    assert not holds("missing!=1")
    assert not holds("status>1")
    assert holds('status=="occupied";width==2.5')
    assert holds("status==occupied ; width == 2.5")
    assert holds("pole==12")  # a bare number also equals the same text
    assert not holds('pole=="13"')
    assert not holds("status==occupied;width>3")
    assert [term.value for term in parse_q('a==1;b==-2.5e1;c==true;d=="x;y"')] == [1, -25.0, True, "x;y"]


async def test_the_listener_takes_a_free_port_when_asked_and_only_then():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        strict = HttpServer("127.0.0.1", port)
        with pytest.raises(OSError, match="address already in use"):
            await strict.start()
        await strict.stop()
        lenient = HttpServer("127.0.0.1", port, fallback_to_free_port=True)

        async def hello(request: web.Request) -> web.Response:
            raise ValueError("boom")

        lenient.app.router.add_get("/boom", hello)
        url = await lenient.start()
        try:
            assert url.startswith("http://127.0.0.1:")
            assert not url.endswith(f":{port}")
            async with aiohttp.ClientSession() as http, http.get(url + "/boom") as response:
                body = await response.text()
            assert response.status == 500
            assert "boom" not in body
            assert "Traceback" not in body
        finally:
            await lenient.stop()

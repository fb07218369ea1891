"""Datashare's HTTP listener and the read-only NGSI-LD API it serves (ETSI GS CIM 009, a subset), so that
FIWARE tools consume the domain services' entities under the caller's agreements.

    GET /ngsi-ld/v1/entities?type=<T>[&q=...][&attrs=a,b][&options=keyValues][&limit=N][&offset=M]
    GET /ngsi-ld/v1/entities/{id}[?attrs=a,b][&options=keyValues]

`HttpServer` is the listener (aiohttp); the lead's app adds its own routes (extract downloads) to
`server.app` before `start()`. `NgsiLdGateway.routes()` are the two NGSI-LD routes.

Where the entities come from. Each entity type is a live view (`cityos_datashare.live`) served by a
domain service's gRPC `NgsiLdService` (GetEntity / ListEntities, JSON-LD text, paged). The gateway calls
it as datashare itself: the channels it is given must carry datashare's own token (role `service`, so
the service answers with everything), e.g. channels built with `cityos_platform.peers.peer_channel`,
whose bearer interceptors put the client-credentials token on every call. The gateway always asks for
the normalized form and reduces it to keyValues itself (Property and GeoProperty to their value,
Relationship to its object), the reduction the services guarantee equals their keyValues form.

Who sees what (dataset `ngsi-ld.<Type>`):
- No token, or a token that does not verify: 401. Authentication is the gRPC server's
  (`cityos_platform.authz.Authenticator`, the same tokens and API keys).
- A city-wide role (`city-admin`, `service`) or the view's owner organization: every entity, every
  attribute (receipts with no agreement, purpose "city-wide role" / "owner access").
- Anyone else: the agreements in force by which their organization reads the dataset (`grants_for`:
  APPROVED, before expiry; a revoked or expired agreement stops access at once). None: 403. Agreements
  with an aggregation floor (`min_group_size` > 0) allow grouped reads only, which this API cannot
  serve: they are set aside, and 403 says so when nothing else is left. An agreement whose time window
  does not include now admits nothing (a live view's rows are the present).
- Rows: an entity is served when one of the caller's agreements admits it: the agreement has no areas,
  or the entity's place lies in one of them (a registry area: `Area.contains`, exact; `h3:<cell>`: the
  point's resolution-9 cell is that cell). The place is the GeoJSON Point in `location`; an entity
  without one is placed by the site it references (`refParkingSite`: a parking group); an entity with
  no point at all (or a polygon) is in no area, so only agreements without areas admit it.
- Attributes: the union of the columns of the agreements that admit the entity (personal or sensitive
  fields never: those need an aggregation floor), plus `id`, `type` and `@context`. `attrs` narrows
  them further (and, for a query, keeps only entities with at least one of them).
- `q` may only name attributes the caller may read (400 BadRequestData naming the others: filtering on
  a hidden attribute would leak it one comparison at a time), and is evaluated on what would be
  returned, so an entity never matches through an attribute it does not show.
- GetEntity of an entity outside the caller's scope is 404, exactly as one that does not exist.

q: terms `attr<op>value` joined by `;` (AND); op `==`, `!=`, `<`, `<=`, `>`, `>=`; value a number,
`true`/`false`, a "quoted string" or a bare word. Comparison is on keyValues values: on an array, `==`
holds when an element equals the value and `!=` when none does; ordering compares numbers with numbers
and strings with strings (ISO 8601 times order as text); an entity without the attribute never matches.
A bare word that looks like a number also equals the same text in a string attribute. OR (`|`),
parentheses, ranges, lists and attribute paths are not supported (400).

Paging: `limit` 1 to 1000 (default 20), `offset` from 0. The gateway pages through the service's
ListEntities (`upstream_page_size`, 500) applying scope, `attrs` and `q` until it has offset+limit
matches or the type is exhausted; the work is proportional to the entities scanned, not returned.

Representation: normalized by default, `options=keyValues` (or `simplified`, or `format=keyValues`)
for keyValues. `application/ld+json` with `@context` in each entity, unless the `Accept` header asks for
`application/json` and not `application/ld+json`: then `application/json` without `@context` and a
`Link` header to the view's context. Another `Accept` is 406.

Receipts: every successful read records (`record`) before it answers: kind NGSI_LD, the attributes
returned as columns (`id` and `type` aside), the entities as row_count, query_hash = SHA-256 of
`GET <path>?<sorted query>`, completed. Each entity is recorded under the first (by agreement id) of the
agreements that admit it, one receipt per agreement used; a query that matched nothing records one
receipt with no rows under the first agreement. A read whose receipt cannot be written fails (500).

Errors are NGSI-LD ProblemDetails (`application/json`: type, title, status, detail):
BadRequestData / InvalidRequest 400, ResourceNotFound 404, InternalError 500 (with an `errorId` that
is also logged, never a stack trace); the standard defines no type for 401, 403, 406 and 503, so those
are `urn:cityos:errors:Unauthenticated`, `PermissionDenied`, `NotAcceptable` and `ServiceUnavailable`.
The service's own answers map: NOT_FOUND (and FAILED_PRECONDITION: an entity the models cannot
describe) 404, INVALID_ARGUMENT 400, UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED 503.

Not supported: the other query parameters (`id`, `idPattern`, `geoQ` and georel/geometry/coordinates,
`count`, `pick`/`omit`, `lang`, `csf`, `scopeQ`, ...) are refused with 400 rather than ignored, several
types in `type`, temporal and write operations, subscriptions, NGSILD-Tenant.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import ModuleType
from typing import Any, Final
from urllib.parse import urlencode

import grpc
import h3  # type: ignore[import-untyped]
from aiohttp import web

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos.parking.v1 import ngsild_pb2 as parking_ngsild
from cityos.parking.v1 import ngsild_pb2_grpc as parking_ngsild_grpc
from cityos.streetlights.v1 import ngsild_pb2 as streetlights_ngsild
from cityos.streetlights.v1 import ngsild_pb2_grpc as streetlights_ngsild_grpc
from cityos_datashare.grants import grants_for
from cityos_datashare.live import CORE_MEMBERS, LIVE_VIEWS, LiveView, views_by_type
from cityos_datashare.receipts import AccessRecord, query_hash
from cityos_datashare.terms import RESTRICTED, Grant
from cityos_platform.areas import AREA_CELL_RESOLUTION, AreaRegistry
from cityos_platform.auth import Principal
from cityos_platform.authz import Authenticator
from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.db import Database
from cityos_platform.errors import NotFound, Unauthenticated, Unavailable
from cityos_platform.tenancy import is_city_wide

log = logging.getLogger(__name__)

ENTITIES_PATH: Final = "/ngsi-ld/v1/entities"
LD_JSON: Final = "application/ld+json"
JSON: Final = "application/json"
CONTEXT_REL: Final = "http://www.w3.org/ns/json-ld#context"

NGSI_LD_ERRORS: Final = "https://uri.etsi.org/ngsi-ld/errors/"
BAD_REQUEST_DATA: Final = NGSI_LD_ERRORS + "BadRequestData"
INVALID_REQUEST: Final = NGSI_LD_ERRORS + "InvalidRequest"
RESOURCE_NOT_FOUND: Final = NGSI_LD_ERRORS + "ResourceNotFound"
INTERNAL_ERROR: Final = NGSI_LD_ERRORS + "InternalError"
UNAUTHENTICATED: Final = "urn:cityos:errors:Unauthenticated"
PERMISSION_DENIED: Final = "urn:cityos:errors:PermissionDenied"
NOT_ACCEPTABLE: Final = "urn:cityos:errors:NotAcceptable"
SERVICE_UNAVAILABLE: Final = "urn:cityos:errors:ServiceUnavailable"

DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 1000
MAX_OFFSET: Final = 1_000_000
UPSTREAM_PAGE_SIZE: Final = 500
UPSTREAM_TIMEOUT_S: Final = 10.0
MAX_Q_LENGTH: Final = 2000
MAX_Q_TERMS: Final = 20
MAX_ATTRS: Final = 100
MAX_ENTITY_ID: Final = 300
# The query parameters served; any other is refused rather than silently ignored.
LIST_PARAMETERS: Final = frozenset({"type", "q", "attrs", "options", "format", "limit", "offset"})
GET_PARAMETERS: Final = frozenset({"attrs", "options", "format"})
# The references that place an entity without a point of its own.
PLACED_BY: Final = ("refParkingSite",)
OWNER_PURPOSE: Final = "owner access"
CITY_WIDE_PURPOSE: Final = "city-wide role"

# The generated modules of each service's NgsiLdService (one shape: GetEntity, ListEntities).
SERVICE_PROTOS: Final[Mapping[str, tuple[ModuleType, ModuleType]]] = {
    "parking": (parking_ngsild, parking_ngsild_grpc),
    "streetlights": (streetlights_ngsild, streetlights_ngsild_grpc),
}
NORMALIZED_FORMAT: Final = 1  # ENTITY_FORMAT_NORMALIZED in both protos

_ATTRIBUTE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENTITY_ID = re.compile(r"^urn:ngsi-ld:(?P<type>[A-Za-z_][A-Za-z0-9_]*):(?P<local>[^\s]+)$")
_TERM = re.compile(r"^(?P<attribute>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>==|!=|<=|>=|<|>)\s*(?P<value>.+?)\s*$")
_NUMBER = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$")
_BARE = re.compile(r"^[^\s\"'=<>!;|()\[\]]+$")


# -- errors ------------------------------------------------------------------------------------------------


class NgsiLdError(Exception):
    """An answer other than success, as NGSI-LD ProblemDetails."""

    def __init__(
        self, status: int, type_: str, title: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.type, self.title, self.detail = status, type_, title, detail
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return problem(self.status, self.type, self.title, self.detail, headers=self.headers)


def problem(
    status: int,
    type_: str,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: str,
) -> web.Response:
    body = {"type": type_, "title": title, "status": status, "detail": detail, **extra}
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def bad_request(detail: str) -> NgsiLdError:
    return NgsiLdError(400, BAD_REQUEST_DATA, "Bad request data", detail)


def invalid_request(detail: str) -> NgsiLdError:
    return NgsiLdError(400, INVALID_REQUEST, "Invalid request", detail)


def not_found(entity_id: str) -> NgsiLdError:
    return NgsiLdError(404, RESOURCE_NOT_FOUND, "Entity not found", f"no entity {entity_id}")


def forbidden(detail: str) -> NgsiLdError:
    return NgsiLdError(403, PERMISSION_DENIED, "Permission denied", detail)


def unauthenticated(detail: str) -> NgsiLdError:
    return NgsiLdError(
        401, UNAUTHENTICATED, "Unauthenticated", detail, headers={"WWW-Authenticate": 'Bearer realm="cityos"'}
    )


def unavailable(detail: str) -> NgsiLdError:
    return NgsiLdError(503, SERVICE_UNAVAILABLE, "Service unavailable", detail, headers={"Retry-After": "5"})


def internal_error(request: web.Request) -> web.Response:
    """500 with an error id, the exception logged under it (never sent)."""
    error_id = uuid.uuid4().hex
    log.exception("%s %s failed (error id %s)", request.method, request.path, error_id)
    return problem(
        500,
        INTERNAL_ERROR,
        "Internal error",
        f"the request failed; quote error id {error_id} to the operators",
        errorId=error_id,
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# -- the listener ------------------------------------------------------------------------------------------


class HttpServer:
    """An aiohttp listener. Add routes to `app` before `start()`; `start()` returns the base URL.

    It has no middleware on purpose: aiohttp keeps the handlers of an application with middlewares in a
    process-wide cache (`web_app._cached_build_middleware`), which would keep every route's handler —
    and what it holds, such as the gateway's gRPC channels — alive until the process exits. A handler
    that fails unexpectedly gets aiohttp's plain 500 (no stack trace; it is logged); the NGSI-LD
    handlers answer their own ProblemDetails with an error id."""

    def __init__(self, host: str, port: int, *, fallback_to_free_port: bool = False) -> None:
        self.host = host
        self.port = port
        self.fallback_to_free_port = fallback_to_free_port
        self.app = web.Application()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self, *, fallback_to_free_port: bool | None = None) -> str:
        """Listen on host:port (0: a free port). When the port is taken and falling back is allowed
        (here or in the constructor), take a free one and log it; else the OSError is raised."""
        if self._runner is not None:
            raise RuntimeError("the HTTP server is already started")
        fallback = self.fallback_to_free_port if fallback_to_free_port is None else fallback_to_free_port
        runner = web.AppRunner(self.app)
        await runner.setup()
        try:
            try:
                await web.TCPSite(runner, self.host, self.port).start()
            except OSError as error:
                if not (fallback and self.port != 0 and error.errno == errno.EADDRINUSE):
                    raise
                await web.TCPSite(runner, self.host, 0).start()
                log.warning(
                    "HTTP port %s on %s is taken; listening on %s instead",
                    self.port,
                    self.host,
                    _bound_port(runner),
                )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.url = f"http://{_url_host(self.host)}:{_bound_port(runner)}"
        return self.url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def _bound_port(runner: web.AppRunner) -> int:
    address = runner.addresses[-1]
    return int(address[1])


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# -- NGSI-LD pieces: q, reduction, placement ----------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One `attr<op>value` term of a q expression."""

    attribute: str
    op: str
    value: float | int | str | bool
    # The value as written when it was not quoted (a bare word or a number), else None.
    bare: str | None = None

    def matches(self, entity: Mapping[str, Any]) -> bool:
        if self.attribute not in entity:
            return False
        value = entity[self.attribute]
        candidates = value if isinstance(value, list) else [value]
        if self.op == "==":
            return any(self._equals(candidate) for candidate in candidates)
        if self.op == "!=":
            return not any(self._equals(candidate) for candidate in candidates)
        return any(self._orders(candidate) for candidate in candidates)

    def _equals(self, candidate: Any) -> bool:
        if _is_number(candidate) and _is_number(self.value):
            return bool(candidate == self.value)
        if isinstance(candidate, str):
            return candidate == self.value or (self.bare is not None and candidate == self.bare)
        if isinstance(candidate, bool) and isinstance(self.value, bool):
            return candidate is self.value
        return False

    def _orders(self, candidate: Any) -> bool:
        if _is_number(candidate) and _is_number(self.value):
            left, right = float(candidate), float(self.value)
        elif isinstance(candidate, str) and isinstance(self.value, str):
            left, right = candidate, self.value  # type: ignore[assignment]
        else:
            return False
        if self.op == "<":
            return left < right
        if self.op == "<=":
            return left <= right
        if self.op == ">":
            return left > right
        return left >= right


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _split_terms(text: str) -> list[str]:
    """`;`-separated terms, quotes respected; OR and parentheses are refused."""
    terms: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "|()":
            raise invalid_request(f"q: {char!r} is not supported (terms joined by ';' only)")
        elif not quoted and char == ";":
            terms.append("".join(current))
            current = []
            continue
        current.append(char)
    if quoted:
        raise invalid_request("q: a quoted string is not closed")
    terms.append("".join(current))
    return terms


def parse_q(text: str) -> tuple[Term, ...]:
    """A q expression (see the module doc) as terms; 400 InvalidRequest when malformed."""
    if len(text) > MAX_Q_LENGTH:
        raise invalid_request(f"q: at most {MAX_Q_LENGTH} characters")
    parts = _split_terms(text)
    if len(parts) > MAX_Q_TERMS:
        raise invalid_request(f"q: at most {MAX_Q_TERMS} terms")
    terms = []
    for part in parts:
        match = _TERM.match(part.strip())
        if match is None:
            raise invalid_request(f"q: {part.strip()!r} is not attribute<op>value (op ==, !=, <, <=, >, >=)")
        raw = match["value"]
        value: float | int | str | bool
        bare: str | None = raw
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            value, bare = raw[1:-1], None
        elif _NUMBER.match(raw):
            number = float(raw)
            if not math.isfinite(number):
                raise invalid_request(f"q: {raw} is not a finite number")
            value = int(raw) if re.fullmatch(r"-?[0-9]+", raw) else number
        elif raw in ("true", "false"):
            value = raw == "true"
        elif _BARE.match(raw):
            value = raw
        else:
            raise invalid_request(f'q: {raw!r} is not a number, a "quoted string" or a bare word')
        terms.append(Term(match["attribute"], match["op"], value, bare))
    return tuple(terms)


def reduce(entity: Mapping[str, Any]) -> dict[str, Any]:
    """The keyValues form of a normalized entity: Property/GeoProperty to the value, Relationship to the
    object, sub-attributes dropped (the services guarantee this equals their keyValues form)."""
    return {name: attr if name in CORE_MEMBERS else _reduced(attr) for name, attr in entity.items()}


def _reduced(attr: Any) -> Any:
    if isinstance(attr, list):
        return [_reduced(instance) for instance in attr]
    if not isinstance(attr, Mapping):
        return attr
    if attr.get("type") == "Relationship" and "object" in attr:
        return attr["object"]
    if "value" in attr:
        return attr["value"]
    return attr


def _point(location: Any) -> tuple[float, float] | None:
    """(lat, lng) of a GeoJSON Point, None for anything else."""
    if not isinstance(location, Mapping) or location.get("type") != "Point":
        return None
    coordinates = location.get("coordinates")
    if not isinstance(coordinates, list) or len(coordinates) < 2:
        return None
    lng, lat = coordinates[0], coordinates[1]
    if not (_is_number(lng) and _is_number(lat) and -90 <= lat <= 90 and -180 <= lng <= 180):
        return None
    return float(lat), float(lng)


def _csv(text: str, what: str, limit: int) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    if len(names) > limit:
        raise bad_request(f"{what}: at most {limit} names")
    for name in names:
        if not _ATTRIBUTE.match(name):
            raise bad_request(f"{what}: {name!r} is not an attribute name")
    return names


# -- who reads what ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Access:
    """The caller's access to one view: everything (`purpose` says why) or the grants' scope."""

    full: bool
    purpose: str
    grants: tuple[Grant, ...]
    # grant agreement id -> the attributes it lets the caller read
    columns: Mapping[str, frozenset[str]]

    @property
    def readable(self) -> frozenset[str] | None:
        """Every attribute the caller may read; None: all of them."""
        if self.full:
            return None
        readable: set[str] = set()
        for names in self.columns.values():
            readable |= names
        return frozenset(readable)


@dataclass(frozen=True)
class _Served:
    """An entity as it will be returned, and the agreement it is recorded under (None: full access)."""

    normalized: dict[str, Any]
    key_values: dict[str, Any]
    attributes: tuple[str, ...]
    grant: Grant | None


@dataclass
class _Read:
    """One request's parameters and per-request cache."""

    view: LiveView
    key_values: bool
    media_type: str
    attrs: tuple[str, ...] | None
    terms: tuple[Term, ...] = ()
    places: dict[str, tuple[float, float] | None] = field(default_factory=dict)


class NgsiLdGateway:
    """The NGSI-LD routes over the services' NgsiLdService, under the caller's agreements."""

    def __init__(
        self,
        db: Database,
        areas: AreaRegistry,
        authenticator: Authenticator,
        channels: Mapping[str, grpc.aio.Channel],
        record: Callable[[AccessRecord], Awaitable[object]] | None,
        views: Sequence[LiveView] = LIVE_VIEWS,
        clock: Clock = SYSTEM_CLOCK,
        *,
        upstream_page_size: int = UPSTREAM_PAGE_SIZE,
        upstream_timeout_s: float = UPSTREAM_TIMEOUT_S,
    ) -> None:
        if not 1 <= upstream_page_size <= UPSTREAM_PAGE_SIZE:
            raise ValueError(f"upstream_page_size must be 1 to {UPSTREAM_PAGE_SIZE}")
        self.db = db
        self.areas = areas
        self.authenticator = authenticator
        self.record = record
        self.clock = clock
        self.views = views_by_type(list(views))
        self.upstream_page_size = upstream_page_size
        self.upstream_timeout_s = upstream_timeout_s
        unknown = sorted({view.service for view in views} - set(SERVICE_PROTOS))
        if unknown:
            raise ValueError(f"no NgsiLdService client for service(s) {', '.join(unknown)}")
        # service -> (messages module, stub); a view whose service has no channel answers 503.
        self._stubs: dict[str, tuple[ModuleType, Any]] = {
            service: (SERVICE_PROTOS[service][0], SERVICE_PROTOS[service][1].NgsiLdServiceStub(channel))
            for service, channel in channels.items()
            if service in SERVICE_PROTOS
        }

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(ENTITIES_PATH, self.query_entities, allow_head=False),
            web.get(ENTITIES_PATH + "/{entity_id}", self.retrieve_entity, allow_head=False),
        ]

    # -- the handlers ---------------------------------------------------------------------------------------

    async def query_entities(self, request: web.Request) -> web.Response:
        return await self._guard(request, self._query)

    async def retrieve_entity(self, request: web.Request) -> web.Response:
        return await self._guard(request, self._retrieve)

    async def _guard(
        self, request: web.Request, handle: Callable[[web.Request], Awaitable[web.Response]]
    ) -> web.Response:
        try:
            return await handle(request)
        except NgsiLdError as error:
            return error.response()
        except asyncio.CancelledError:
            raise
        except Exception:
            return internal_error(request)

    async def _query(self, request: web.Request) -> web.Response:
        principal = await self._caller(request)
        query = _single_values(request, LIST_PARAMETERS)
        entity_type = query.get("type", "")
        if not entity_type:
            raise bad_request("type is required (this server queries one entity type at a time)")
        if "," in entity_type:
            raise bad_request("type: one entity type at a time")
        read = self._read(request, self._view(entity_type), query)
        limit = _integer(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = _integer(query, "offset", 0, 0, MAX_OFFSET)
        access = await self._access(principal, read.view)
        if "q" in query:
            read.terms = parse_q(query["q"])
            self._check_q(access, read.terms)
        matched = await self._scan(read, access, offset + limit)
        served = matched[offset:]
        await self._receipts(request, principal, read.view, access, served)
        body = [self._body(read, entity) for entity in served]
        return self._respond(read, body)

    async def _retrieve(self, request: web.Request) -> web.Response:
        principal = await self._caller(request)
        query = _single_values(request, GET_PARAMETERS)
        entity_id = request.match_info["entity_id"]
        match = _ENTITY_ID.match(entity_id)
        if match is None or len(entity_id) > MAX_ENTITY_ID:
            raise bad_request(f"{entity_id[:100]!r} is not an entity id (urn:ngsi-ld:<Type>:<id>)")
        read = self._read(request, self._view(match["type"]), query)
        access = await self._access(principal, read.view)
        document = await self._get_upstream(read.view, entity_id, full=access.full)
        served = await self._serve(read, access, document)
        if served is None or served.key_values.get("id") != entity_id:
            raise not_found(entity_id)
        await self._receipts(request, principal, read.view, access, [served])
        return self._respond(read, self._body(read, served))

    # -- request pieces --------------------------------------------------------------------------------------

    async def _caller(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization")
        if not header:
            raise unauthenticated("send a bearer token: Authorization: Bearer <token>")
        try:
            principal = await self.authenticator.principal({"authorization": header})
        except Unauthenticated as error:
            raise unauthenticated(error.message) from None
        except Unavailable as error:
            raise unavailable(f"cannot verify tokens now: {error.message}") from None
        if principal.is_anonymous:
            raise unauthenticated("send a bearer token: Authorization: Bearer <token>")
        return principal

    def _view(self, entity_type: str) -> LiveView:
        view = self.views.get(entity_type)
        if view is None:
            known = ", ".join(sorted(self.views))
            raise bad_request(f"entity type {entity_type[:100]!r} is not served here (served: {known})")
        return view

    def _read(self, request: web.Request, view: LiveView, query: Mapping[str, str]) -> _Read:
        return _Read(
            view=view,
            key_values=_key_values(query),
            media_type=_negotiate(request.headers.get("Accept", "")),
            attrs=_csv(query["attrs"], "attrs", MAX_ATTRS) if "attrs" in query else None,
        )

    async def _access(self, principal: Principal, view: LiveView) -> _Access:
        if principal.organization and principal.organization == view.owner:
            return _Access(full=True, purpose=OWNER_PURPOSE, grants=(), columns={})
        if is_city_wide(principal):
            return _Access(full=True, purpose=CITY_WIDE_PURPOSE, grants=(), columns={})
        grants = await grants_for(self.db, principal.organization, view.dataset_id, self.areas)
        now = self.clock.now()
        grants = [grant for grant in grants if grant.in_force(now)]
        if not grants:
            raise forbidden(
                f"organization {principal.organization or '(none)'} has no agreement in force for "
                f"{view.dataset_id}; request one with AgreementService.RequestAgreement"
            )
        row_level = [grant for grant in grants if grant.terms.min_group_size == 0]
        if not row_level:
            raise forbidden(
                f"the agreements for {view.dataset_id} allow aggregated reads only (an aggregation floor), "
                "which the NGSI-LD API cannot serve; use AccessService.Query with group_by"
            )
        current = [grant for grant in row_level if _window_admits(grant, now)]
        if not current:
            raise forbidden(f"the agreements for {view.dataset_id} are outside their time window now")
        current.sort(key=lambda grant: grant.agreement_id)
        classification = view.classification
        columns = {
            grant.agreement_id: frozenset(
                name
                for name in grant.terms.columns
                if name in classification and classification[name] not in RESTRICTED
            )
            for grant in current
        }
        return _Access(full=False, purpose="", grants=tuple(current), columns=columns)

    def _check_q(self, access: _Access, terms: Sequence[Term]) -> None:
        readable = access.readable
        if readable is None:
            return
        hidden = sorted({term.attribute for term in terms} - readable)
        if hidden:
            raise bad_request(
                f"q: the agreements do not grant attribute(s) {', '.join(hidden)}; filter only on "
                f"{', '.join(sorted(readable)) or 'nothing'}"
            )

    # -- reading ---------------------------------------------------------------------------------------------

    async def _scan(self, read: _Read, access: _Access, wanted: int) -> list[_Served]:
        """The first `wanted` entities of the type that are in scope and match, in the service's order."""
        matched: list[_Served] = []
        token = ""
        while True:
            documents, token = await self._list_upstream(read.view, token)
            for document in documents:
                served = await self._serve(read, access, document)
                if served is None:
                    continue
                if read.attrs is not None and not served.attributes:
                    continue  # `attrs` keeps the entities that have at least one of them
                if not all(term.matches(served.key_values) for term in read.terms):
                    continue
                matched.append(served)
                if len(matched) >= wanted:
                    return matched
            if not token:
                return matched

    async def _serve(self, read: _Read, access: _Access, document: dict[str, Any]) -> _Served | None:
        """The entity cut to what the caller may see, or None when no agreement admits it."""
        key_values = reduce(document)
        grant: Grant | None = None
        if access.full:
            allowed: frozenset[str] | None = None
        else:
            admitting = await self._admitting(read, access, key_values)
            if not admitting:
                return None
            grant = admitting[0]
            allowed = frozenset(name for g in admitting for name in access.columns[g.agreement_id])
        attributes = tuple(
            name
            for name in document
            if name not in CORE_MEMBERS
            and (allowed is None or name in allowed)
            and (read.attrs is None or name in read.attrs)
        )
        keep = ("id", "type", *attributes, "@context")
        return _Served(
            normalized={name: document[name] for name in keep if name in document},
            key_values={name: key_values[name] for name in keep if name in key_values},
            attributes=attributes,
            grant=grant,
        )

    async def _admitting(self, read: _Read, access: _Access, key_values: dict[str, Any]) -> list[Grant]:
        if all(not grant.terms.areas for grant in access.grants):
            return list(access.grants)
        place = await self._place(read, key_values)
        return [grant for grant in access.grants if self._in_areas(grant, place)]

    async def _place(self, read: _Read, key_values: Mapping[str, Any]) -> tuple[float, float] | None:
        """The entity's point; without one, the point of the site it references (cached per request)."""
        point = _point(key_values.get("location"))
        if point is not None or "location" in key_values:
            return point
        for reference in PLACED_BY:
            target = key_values.get(reference)
            if not isinstance(target, str):
                continue
            if target not in read.places:
                read.places[target] = await self._place_of(read.view, target)
            return read.places[target]
        return None

    async def _place_of(self, view: LiveView, entity_id: str) -> tuple[float, float] | None:
        try:
            document = await self._get_upstream(view, entity_id, full=False)
        except NgsiLdError as error:
            if error.status == 404:
                return None
            raise
        return _point(reduce(document).get("location"))

    def _in_areas(self, grant: Grant, place: tuple[float, float] | None) -> bool:
        if not grant.terms.areas:
            return True
        if place is None:
            return False
        lat, lng = place
        for name in grant.terms.areas:
            if name.startswith("h3:"):
                if h3.latlng_to_cell(lat, lng, AREA_CELL_RESOLUTION) == name[3:]:
                    return True
                continue
            try:
                area = self.areas.get(name)
            except NotFound:
                log.warning("agreement %s names area %r, which the registry no longer has", grant.name, name)
                continue
            if area.contains(lat, lng):
                return True
        return False

    # -- the services ----------------------------------------------------------------------------------------

    def _stub(self, view: LiveView) -> tuple[ModuleType, Any]:
        stub = self._stubs.get(view.service)
        if stub is None:
            raise unavailable(f"{view.entity_type} comes from the {view.service} service, not connected here")
        return stub

    async def _get_upstream(self, view: LiveView, entity_id: str, *, full: bool) -> dict[str, Any]:
        messages, stub = self._stub(view)
        request = messages.GetEntityRequest(id=entity_id, format=NORMALIZED_FORMAT)
        try:
            answer = await stub.GetEntity(request, timeout=self.upstream_timeout_s)
        except grpc.aio.AioRpcError as error:
            raise _upstream_error(view, error, entity_id, full=full) from None
        return _document(answer.entity_json)

    async def _list_upstream(self, view: LiveView, token: str) -> tuple[list[dict[str, Any]], str]:
        messages, stub = self._stub(view)
        request = messages.ListEntitiesRequest(
            type=view.entity_type,
            format=NORMALIZED_FORMAT,
            page_size=self.upstream_page_size,
            page_token=token,
        )
        try:
            answer = await stub.ListEntities(request, timeout=self.upstream_timeout_s)
        except grpc.aio.AioRpcError as error:
            raise _upstream_error(view, error, "", full=False) from None
        return [_document(text) for text in answer.entities_json], str(answer.next_page_token)

    # -- answering -------------------------------------------------------------------------------------------

    async def _receipts(
        self,
        request: web.Request,
        principal: Principal,
        view: LiveView,
        access: _Access,
        served: Sequence[_Served],
    ) -> None:
        if self.record is None:
            return
        digest = query_hash(f"{request.method} {request.path}?{urlencode(sorted(request.query.items()))}")

        def record(owner: str, agreement_id: str, purpose: str, entities: Sequence[_Served]) -> AccessRecord:
            columns = sorted({name for entity in entities for name in entity.attributes})
            return AccessRecord(
                subject=principal.subject,
                consumer_organization=principal.organization,
                owner_organization=owner,
                dataset_id=view.dataset_id,
                agreement_id=agreement_id,
                purpose=purpose,
                columns=tuple(columns),
                row_count=len(entities),
                query_hash=digest,
                kind=pb.ACCESS_KIND_NGSI_LD,
                completed=True,
            )

        records: list[AccessRecord] = []
        if access.full:
            records.append(record(view.owner, "", access.purpose, served))
        else:
            for grant in access.grants:
                mine = [entity for entity in served if entity.grant is grant]
                if mine or (not served and grant is access.grants[0]):
                    records.append(record(grant.owner_organization, grant.agreement_id, grant.purpose, mine))
        for each in records:
            await self.record(each)

    def _body(self, read: _Read, served: _Served) -> dict[str, Any]:
        body = dict(served.key_values if read.key_values else served.normalized)
        if read.media_type == JSON:
            body.pop("@context", None)
        return body

    def _respond(self, read: _Read, body: Any) -> web.Response:
        headers = {}
        if read.media_type == JSON:
            headers["Link"] = f'<{read.view.context}>; rel="{CONTEXT_REL}"; type="{LD_JSON}"'
        return web.Response(
            text=_dumps(body), status=200, content_type=read.media_type, charset="utf-8", headers=headers
        )


# -- helpers -------------------------------------------------------------------------------------------------


def _single_values(request: web.Request, allowed: frozenset[str]) -> dict[str, str]:
    unsupported = sorted(set(request.query) - allowed)
    if unsupported:
        raise bad_request(
            f"query parameter(s) {', '.join(name[:40] for name in unsupported)} not supported here "
            f"(supported: {', '.join(sorted(allowed))})"
        )
    values: dict[str, str] = {}
    for name, value in request.query.items():
        if name in values:
            raise bad_request(f"{name} is given twice")
        values[name] = value
    return values


def _integer(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    if name not in query:
        return default
    text = query[name]
    if not re.fullmatch(r"[0-9]{1,9}", text):
        raise bad_request(f"{name} must be a whole number from {low} to {high}")
    value = int(text)
    if not low <= value <= high:
        raise bad_request(f"{name} must be from {low} to {high}, got {value}")
    return value


def _key_values(query: Mapping[str, str]) -> bool:
    """Whether keyValues is asked for (`options=keyValues|simplified`, or `format=`)."""
    options = [option.strip() for option in query.get("options", "").split(",") if option.strip()]
    unknown = sorted(set(options) - {"keyValues", "simplified", "normalized"})
    if unknown:
        raise bad_request(f"options: {', '.join(unknown)} not supported (keyValues, simplified, normalized)")
    forms = {"keyValues" if option == "simplified" else option for option in options}
    if "format" in query:
        if query["format"] not in ("keyValues", "simplified", "normalized"):
            raise bad_request("format must be keyValues, simplified or normalized")
        forms.add("keyValues" if query["format"] == "simplified" else query["format"])
    if len(forms) > 1:
        raise bad_request("ask for keyValues or normalized, not both")
    return forms == {"keyValues"}


def _negotiate(accept: str) -> str:
    """application/ld+json unless only application/json is accepted; 406 for neither."""
    ranges = {part.split(";")[0].strip().lower() for part in accept.split(",") if part.strip()}
    if not ranges or LD_JSON in ranges:
        return LD_JSON
    if JSON in ranges:
        return JSON
    if ranges & {"*/*", "application/*"}:
        return LD_JSON
    raise NgsiLdError(406, NOT_ACCEPTABLE, "Not acceptable", f"entities are served as {LD_JSON} or {JSON}")


def _window_admits(grant: Grant, now: datetime) -> bool:
    start, end = grant.terms.window_start, grant.terms.window_end
    return (start is None or start <= now) and (end is None or now < end)


def _document(text: str) -> dict[str, Any]:
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ValueError("the service answered an entity that is not a JSON object")
    return document


def _upstream_error(view: LiveView, error: grpc.aio.AioRpcError, entity_id: str, *, full: bool) -> Exception:
    code = error.code()
    if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION) and entity_id:
        missing = not_found(entity_id)
        if full and code == grpc.StatusCode.FAILED_PRECONDITION:
            missing.detail = error.details() or missing.detail
        return missing
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return bad_request(error.details() or "the request was refused as invalid")
    if code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ):
        return unavailable(f"the {view.service} service is not answering now; try again")
    return RuntimeError(f"{view.service} NgsiLdService answered {code.name}: {error.details()}")


__all__ = [
    "ENTITIES_PATH",
    "HttpServer",
    "NgsiLdError",
    "NgsiLdGateway",
    "Term",
    "parse_q",
    "reduce",
]

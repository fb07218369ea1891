"""`cityos.devices.v1.DeviceService`: device models, devices and their credentials."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Sequence
from datetime import UTC, timedelta

import aiomqtt
import grpc
from cryptography.hazmat.primitives import serialization
from sqlalchemy import ColumnElement, select

from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_devices import credentials, domain, twin
from cityos_devices.ca import DeviceCA, fingerprint
from cityos_devices.hub import ConnectionHub
from cityos_devices.models import DeviceModelRow, DeviceRow
from cityos_devices.mqtt import BrokerAdmin, BrokerError
from cityos_devices.telemetry import Ingestor
from cityos_platform.areas import AreaRegistry, cell_for
from cityos_platform.db import Database, Tx
from cityos_platform.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, Unavailable
from cityos_platform.idempotency import idempotent
from cityos_platform.interceptor import current_call
from cityos_platform.paging import PageTokens, page_size
from cityos_platform.tenancy import Access, can_reach, not_found, owner_for_new, visible_clause

MAX_BATCH = 1000
UPDATABLE = {
    "serial_number",
    "firmware_version",
    "tags",
    "location",
    "subscription",
    "ownership.operator_organization",
    "ownership.maintainer_organization",
}


async def _intervals(session: object, model_ids: Sequence[str]) -> dict[str, float]:
    rows = await session.execute(  # type: ignore[attr-defined]
        select(DeviceModelRow.model_id, DeviceModelRow.reporting_interval_s).where(
            DeviceModelRow.model_id.in_(sorted(set(model_ids)))
        )
    )
    return {model_id: interval for model_id, interval in rows}


class DeviceServicer(devices_pb2_grpc.DeviceServiceServicer):
    def __init__(
        self,
        db: Database,
        page_tokens: PageTokens,
        areas: AreaRegistry,
        tokens: credentials.DeviceTokenVerifier,
        ingestor: Ingestor,
        broker: BrokerAdmin | None = None,
        ca: DeviceCA | None = None,
        hub: ConnectionHub | None = None,
    ) -> None:
        self.hub = hub or ConnectionHub()
        self.broker = broker
        self.ca = ca
        self.db = db
        self.page_tokens = page_tokens
        self.areas = areas
        self.tokens = tokens
        self.ingestor = ingestor

    def _forget(self, device_id: str) -> None:
        """Drop what this process cached about a device that changed (its tokens, its profile)."""
        self.tokens.forget(device_id)
        self.ingestor.forget(device_id)

    # -- device models -----------------------------------------------------------------------------

    async def CreateDeviceModel(
        self, request: devices_pb2.CreateDeviceModelRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.DeviceModel:
        caller = current_call().principal
        violations = domain.validate_model(request.device_model)
        domain.check_id(request.device_model_id, "device_model_id", violations)
        if violations:
            raise InvalidArgument.many(violations)
        model = request.device_model

        async def create(tx: Tx) -> devices_pb2.DeviceModel:
            if await tx.session.get(DeviceModelRow, request.device_model_id) is not None:
                raise AlreadyExists(
                    f"device model 'deviceModels/{request.device_model_id}' already exists",
                    reason="DEVICE_MODEL_EXISTS",
                )
            row = DeviceModelRow(
                model_id=request.device_model_id,
                type=model.type,
                vendor=model.vendor,
                display_name=model.display_name or model.vendor,
                supported_commands=list(model.supported_commands),
                metrics=domain.metric_specs(model),
                reporting_interval_s=domain.seconds(model.reporting_interval),
                owner_organization=caller.organization,
                create_time=tx.now,
            )
            tx.session.add(row)
            created = domain.model_to_proto(row)
            tx.emit(
                "devices.model.created", created, subject=created.name, owner_organization=caller.organization
            )
            return created

        return await idempotent(self.db, request, devices_pb2.DeviceModel, create)

    async def GetDeviceModel(
        self, request: devices_pb2.GetDeviceModelRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.DeviceModel:
        model_id = domain.name_id(request.name, "deviceModels", "name")
        async with self.db.read() as session:
            row = await session.get(DeviceModelRow, model_id)
        if row is None:
            raise not_found("device model", request.name)
        return domain.model_to_proto(row)

    async def ListDeviceModels(
        self, request: devices_pb2.ListDeviceModelsRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.ListDeviceModelsResponse:
        caller = current_call().principal
        size = page_size(request.page_size)
        position = self.page_tokens.parse(
            request.page_token, subject=caller.subject, organization=caller.organization, request=request
        )
        statement = select(DeviceModelRow).where(DeviceModelRow.model_id > (position or {}).get("after", ""))
        if request.type:
            statement = statement.where(DeviceModelRow.type == request.type)
        async with self.db.read() as session:
            rows = list(
                (await session.scalars(statement.order_by(DeviceModelRow.model_id).limit(size + 1))).all()
            )
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = self.page_tokens.issue(
                subject=caller.subject,
                organization=caller.organization,
                request=request,
                position={"after": rows[-1].model_id},
            )
        return devices_pb2.ListDeviceModelsResponse(
            device_models=[domain.model_to_proto(r) for r in rows], next_page_token=token
        )

    # -- devices -------------------------------------------------------------------------------------

    async def _new_device(self, tx: Tx, create: devices_pb2.CreateDeviceRequest, prefix: str) -> DeviceRow:
        caller = current_call().principal
        device = create.device
        model_id = domain.name_id(device.model, "deviceModels", f"{prefix}.model")
        model = await tx.session.get(DeviceModelRow, model_id)
        if model is None:
            raise InvalidArgument.field(f"{prefix}.model", f"no device model {device.model!r}")
        if await tx.session.get(DeviceRow, create.device_id) is not None:
            raise AlreadyExists(f"device 'devices/{create.device_id}' already exists", reason="DEVICE_EXISTS")
        row = DeviceRow(
            device_id=create.device_id,
            model_id=model_id,
            type=model.type,
            serial_number=device.serial_number,
            firmware_version=device.firmware_version,
            tags=sorted(set(device.tags)),
            status=int(devices_pb2.DEVICE_STATUS_PROVISIONED),
            last_radio={},
            last_rsrp_dbm=None,
            last_seen_time=None,
            reported={},
            reported_version=0,
            desired={},
            desired_version=0,
            desired_time=None,
            delivered_desired_version=0,
            latitude=device.location.latitude,
            longitude=device.location.longitude,
            area_cell=cell_for(
                device.location.latitude, device.location.longitude, field=f"{prefix}.location"
            ),
            owner_organization=owner_for_new(caller, device.ownership.owner_organization),
            operator_organization=device.ownership.operator_organization,
            maintainer_organization=device.ownership.maintainer_organization,
            etag=uuid.uuid4().hex[:16],
            create_time=tx.now,
            update_time=tx.now,
            **domain.subscription_columns(device.subscription),
        )
        tx.session.add(row)
        self._emit(tx, "created", row, model.reporting_interval_s)
        return row

    def _emit(self, tx: Tx, what: str, row: DeviceRow, interval: float) -> devices_pb2.Device:
        device = domain.device_to_proto(row, interval, tx.now)
        tx.emit(
            f"devices.device.{what}",
            device,
            subject=device.name,
            owner_organization=row.owner_organization,
            area_cell=row.area_cell,
        )
        return device

    async def CreateDevice(
        self, request: devices_pb2.CreateDeviceRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.Device:
        violations = domain.validate_device(request.device)
        domain.check_id(request.device_id, "device_id", violations)
        if violations:
            raise InvalidArgument.many(violations)

        async def create(tx: Tx) -> devices_pb2.Device:
            row = await self._new_device(tx, request, "device")
            return domain.device_to_proto(row, await self._interval(tx, row.model_id), tx.now)

        return await idempotent(self.db, request, devices_pb2.Device, create)

    async def BatchCreateDevices(
        self, request: devices_pb2.BatchCreateDevicesRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.BatchCreateDevicesResponse:
        if not 1 <= len(request.requests) <= MAX_BATCH:
            raise InvalidArgument.field("requests", f"send 1 to {MAX_BATCH} creates")
        violations: domain.Violations = []
        seen: set[str] = set()
        for index, item in enumerate(request.requests):
            violations += domain.validate_device(item.device, f"requests[{index}].device")
            domain.check_id(item.device_id, f"requests[{index}].device_id", violations)
            if item.device_id in seen:
                violations.append((f"requests[{index}].device_id", f"{item.device_id!r} appears twice"))
            seen.add(item.device_id)
        if violations:
            raise InvalidArgument.many(violations)

        async def create(tx: Tx) -> devices_pb2.BatchCreateDevicesResponse:
            rows = [
                await self._new_device(tx, c, f"requests[{i}].device") for i, c in enumerate(request.requests)
            ]
            intervals = await _intervals(tx.session, [r.model_id for r in rows])
            return devices_pb2.BatchCreateDevicesResponse(
                devices=[domain.device_to_proto(r, intervals[r.model_id], tx.now) for r in rows]
            )

        return await idempotent(self.db, request, devices_pb2.BatchCreateDevicesResponse, create)

    async def _interval(self, tx: Tx, model_id: str) -> float:
        return (await _intervals(tx.session, [model_id]))[model_id]

    async def GetDevice(
        self, request: devices_pb2.GetDeviceRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.Device:
        device_id = domain.name_id(request.name, "devices", "name")
        async with self.db.read() as session:
            row = await session.get(DeviceRow, device_id)
            if row is None or not can_reach(row, current_call().principal):
                raise not_found("device", request.name)
            intervals = await _intervals(session, [row.model_id])
        return domain.device_to_proto(row, intervals[row.model_id], self.db.clock.now())

    def _filters(self, request: devices_pb2.ListDevicesRequest) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        if request.type:
            conditions.append(DeviceRow.type == request.type)
        if request.model:
            conditions.append(DeviceRow.model_id == domain.name_id(request.model, "deviceModels", "model"))
        if request.organization:
            org = request.organization
            conditions.append(
                (DeviceRow.owner_organization == org)
                | (DeviceRow.operator_organization == org)
                | (DeviceRow.maintainer_organization == org)
            )
        if request.status:
            conditions.append(DeviceRow.status == int(request.status))
        if request.firmware_version:
            conditions.append(DeviceRow.firmware_version == request.firmware_version)
        if request.HasField("last_seen_before"):
            conditions.append(DeviceRow.last_seen_time < request.last_seen_before.ToDatetime(tzinfo=UTC))
        if request.HasField("last_seen_after"):
            conditions.append(DeviceRow.last_seen_time > request.last_seen_after.ToDatetime(tzinfo=UTC))
        if request.radio_type:
            conditions.append(DeviceRow.radio_type == int(request.radio_type))
        if request.slice_sst:
            conditions.append(DeviceRow.slice_sst == int(request.slice_sst))
        if request.slice_sd:
            if not domain.SD.match(request.slice_sd):
                raise InvalidArgument.field("slice_sd", "must be 6 hexadecimal digits")
            conditions.append(DeviceRow.slice_sd == request.slice_sd.upper())
        if request.rsrp_below_dbm:
            conditions.append(DeviceRow.last_rsrp_dbm < int(request.rsrp_below_dbm))
        return conditions

    async def ListDevices(
        self, request: devices_pb2.ListDevicesRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.ListDevicesResponse:
        caller = current_call().principal
        size = page_size(request.page_size)
        position = self.page_tokens.parse(
            request.page_token, subject=caller.subject, organization=caller.organization, request=request
        )
        if request.tag and not domain.TAG.match(request.tag):
            raise InvalidArgument.field("tag", "must be 1 to 63 of [a-z0-9:_-]")
        area = None
        exact_cell = ""
        if request.area.startswith("h3:"):
            exact_cell = request.area.removeprefix("h3:")
        elif request.area:
            area = self.areas.resolve(request.area)
        statement = select(DeviceRow).where(visible_clause(DeviceRow, caller), *self._filters(request))
        if exact_cell:
            statement = statement.where(DeviceRow.area_cell == exact_cell)
        if area is not None:
            statement = statement.where(DeviceRow.area_cell.in_(sorted(area.cells)))
        after = (position or {}).get("after", "")
        page: list[DeviceRow] = []
        async with self.db.read() as session:
            # SQL narrows the candidates; tags (a JSON list) and the polygon are checked here.
            while len(page) <= size:
                chunk = list(
                    (
                        await session.scalars(
                            statement.where(DeviceRow.device_id > after)
                            .order_by(DeviceRow.device_id)
                            .limit(size + 1)
                        )
                    ).all()
                )
                page += [
                    row
                    for row in chunk
                    if (not request.tag or request.tag in row.tags)
                    and (area is None or area.contains(row.latitude, row.longitude))
                ]
                if len(chunk) <= size:
                    break
                after = chunk[-1].device_id
            intervals = await _intervals(session, [row.model_id for row in page])
        token = ""
        if len(page) > size:
            page = page[:size]
            token = self.page_tokens.issue(
                subject=caller.subject,
                organization=caller.organization,
                request=request,
                position={"after": page[-1].device_id},
            )
        now = self.db.clock.now()
        return devices_pb2.ListDevicesResponse(
            devices=[domain.device_to_proto(r, intervals[r.model_id], now) for r in page],
            next_page_token=token,
        )

    async def _writable(self, tx: Tx, name: str, field: str) -> DeviceRow:
        device_id = domain.name_id(name, "devices", field)
        row = await tx.session.get(DeviceRow, device_id, with_for_update=True)
        if row is None or not can_reach(row, current_call().principal, Access.WRITE):
            raise not_found("device", name)
        return row

    async def UpdateDevice(
        self, request: devices_pb2.UpdateDeviceRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.Device:
        device = request.device
        paths = list(request.update_mask.paths)
        violations: domain.Violations = [
            ("update_mask", f"cannot update {p!r}") for p in paths if p not in UPDATABLE
        ]
        if not paths:
            violations.append(("update_mask", "name at least one field to update"))
        if "tags" in paths:
            violations += domain.validate_tags(device.tags, "device.tags")
        if "subscription" in paths:
            violations += domain.validate_subscription(device.subscription, "device.subscription")
        violations += domain.refuse_sim_secrets(device, "device")
        if violations:
            raise InvalidArgument.many(violations)
        cell = cell_for(device.location.latitude, device.location.longitude) if "location" in paths else ""
        async with self.db.transaction() as tx:
            row = await self._writable(tx, device.name, "device.name")
            if device.etag and device.etag != row.etag:
                raise Aborted(
                    "the device changed since it was read; read it again and reapply the change",
                    reason="ETAG_MISMATCH",
                    metadata={"current_etag": row.etag},
                )
            if row.status == devices_pb2.DEVICE_STATUS_DECOMMISSIONED:
                raise InvalidArgument.field("device.name", "the device is decommissioned")
            if "serial_number" in paths:
                row.serial_number = device.serial_number
            if "firmware_version" in paths:
                row.firmware_version = device.firmware_version
            if "tags" in paths:
                row.tags = sorted(set(device.tags))
            if cell:
                row.latitude, row.longitude, row.area_cell = (
                    device.location.latitude,
                    device.location.longitude,
                    cell,
                )
            if "subscription" in paths:
                for column, value in domain.subscription_columns(device.subscription).items():
                    setattr(row, column, value)
            if "ownership.operator_organization" in paths:
                row.operator_organization = device.ownership.operator_organization
            if "ownership.maintainer_organization" in paths:
                row.maintainer_organization = device.ownership.maintainer_organization
            row.etag = uuid.uuid4().hex[:16]
            row.update_time = tx.now
            updated = self._emit(tx, "updated", row, await self._interval(tx, row.model_id))
        self._forget(row.device_id)
        return updated

    async def DecommissionDevice(
        self, request: devices_pb2.DecommissionDeviceRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.Device:
        async with self.db.transaction() as tx:
            row = await self._writable(tx, request.name, "name")
            interval = await self._interval(tx, row.model_id)
            if row.status == devices_pb2.DEVICE_STATUS_DECOMMISSIONED:
                return domain.device_to_proto(row, interval, tx.now)  # already done: idempotent
            row.status = int(devices_pb2.DEVICE_STATUS_DECOMMISSIONED)
            row.etag = uuid.uuid4().hex[:16]
            row.update_time = tx.now
            await credentials.revoke(tx, row.device_id)
            await self._broker(self.broker.revoke_device(row.device_id) if self.broker else None)
            device = self._emit(tx, "decommissioned", row, interval)
        self._forget(row.device_id)
        return device

    # -- twin and statistics -------------------------------------------------------------------------

    async def UpdateDesiredState(
        self, request: devices_pb2.UpdateDesiredStateRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.Twin:
        async with self.db.transaction() as tx:
            row = await self._writable(tx, request.device, "device")
            if row.status == devices_pb2.DEVICE_STATUS_DECOMMISSIONED:
                raise InvalidArgument.field("device", "the device is decommissioned")
            updated = twin.apply_patch(tx, row, request.patch, request.expected_desired_version)
            row.update_time = tx.now
            tx.emit(
                "devices.twin.desired_changed",
                updated,
                subject=updated.device,
                owner_organization=row.owner_organization,
                area_cell=row.area_cell,
            )
        self.hub.wake(row.device_id)  # a connected device gets it now
        return updated

    async def GetTwin(
        self, request: devices_pb2.GetTwinRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.Twin:
        device_id = domain.name_id(request.device, "devices", "device")
        async with self.db.read() as session:
            row = await session.get(DeviceRow, device_id)
        if row is None or not can_reach(row, current_call().principal):
            raise not_found("device", request.device)
        return twin.to_proto(row)

    async def GetFleetStatistics(
        self, request: devices_pb2.GetFleetStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.FleetStatistics:
        caller = current_call().principal
        statement = (
            select(DeviceRow, DeviceModelRow.reporting_interval_s)
            .join(DeviceModelRow, DeviceModelRow.model_id == DeviceRow.model_id)
            .where(
                visible_clause(DeviceRow, caller),
                DeviceRow.status != int(devices_pb2.DEVICE_STATUS_DECOMMISSIONED),
            )
        )
        if request.organization:
            org = request.organization
            statement = statement.where(
                (DeviceRow.owner_organization == org)
                | (DeviceRow.operator_organization == org)
                | (DeviceRow.maintainer_organization == org)
            )
        stats = devices_pb2.FleetStatistics()
        now = self.db.clock.now()
        reachable = seen = 0
        async with self.db.read() as session:
            for row, interval in (await session.execute(statement)).all():
                state = domain.connectivity(row, interval, now)
                stats.total += 1
                stats.by_type[row.type] += 1
                stats.by_status[devices_pb2.DeviceStatus.Name(row.status)] += 1  # type: ignore[arg-type]
                stats.by_radio[devices_pb2.RadioType.Name(row.radio_type)] += 1  # type: ignore[arg-type]
                stats.by_firmware[row.firmware_version or "unknown"] += 1
                stats.by_connectivity[devices_pb2.Connectivity.Name(state)] += 1  # type: ignore[arg-type]
                if state != devices_pb2.CONNECTIVITY_NEVER_SEEN:
                    seen += 1
                    reachable += state in (devices_pb2.CONNECTIVITY_ONLINE, devices_pb2.CONNECTIVITY_SLEEPING)
        stats.online_ratio = reachable / seen if seen else 0.0
        return stats

    # -- credentials ---------------------------------------------------------------------------------

    async def _broker(self, operation: Awaitable[None] | None) -> None:
        if operation is None:
            return
        try:
            await operation
        except (BrokerError, aiomqtt.MqttError, OSError, TimeoutError) as error:
            raise Unavailable(
                "the MQTT broker did not take the credential change; nothing was changed, try again",
                reason="BROKER_UNAVAILABLE",
                retry_after_s=5,
            ) from error

    async def IssueDeviceToken(
        self, request: devices_pb2.IssueDeviceTokenRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.IssueDeviceTokenResponse:
        async with self.db.transaction() as tx:
            row = await self._writable(tx, request.device, "device")
            if row.status == devices_pb2.DEVICE_STATUS_DECOMMISSIONED:
                raise InvalidArgument.field("device", "the device is decommissioned")
            issued = credentials.new_token(row.device_id, tx)
            # Before commit: if the broker cannot take the new password, no token exists either.
            await self._broker(
                self.broker.provision_device(row.device_id, issued.token) if self.broker else None
            )
        return devices_pb2.IssueDeviceTokenResponse(token=issued.token, credential_id=issued.credential_id)

    async def SignDeviceCertificate(
        self, request: devices_pb2.SignDeviceCertificateRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.SignDeviceCertificateResponse:
        if self.ca is None:
            raise FailedPrecondition("this deployment has no device CA configured", reason="NO_DEVICE_CA")
        validity = (
            timedelta(seconds=domain.seconds(request.validity))
            if request.HasField("validity")
            else timedelta(days=365)
        )
        if not timedelta(days=1) <= validity <= timedelta(days=825):
            raise InvalidArgument.field("validity", "must be between 1 and 825 days")
        async with self.db.transaction() as tx:
            row = await self._writable(tx, request.device, "device")
            if row.status == devices_pb2.DEVICE_STATUS_DECOMMISSIONED:
                raise InvalidArgument.field("device", "the device is decommissioned")
            certificate = self.ca.sign(request.csr_pem, row.device_id, validity, tx.now)
            credential_id = credentials.add_certificate(tx, row.device_id, fingerprint(certificate))
        response = devices_pb2.SignDeviceCertificateResponse(
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
            ca_certificate_pem=self.ca.certificate_pem,
            credential_id=credential_id,
        )
        response.not_after.FromDatetime(certificate.not_valid_after_utc)
        return response

    async def RevokeDeviceCredentials(
        self, request: devices_pb2.RevokeDeviceCredentialsRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.RevokeDeviceCredentialsResponse:
        async with self.db.transaction() as tx:
            row = await self._writable(tx, request.device, "device")
            revoked = await credentials.revoke(tx, row.device_id, request.credential_id)
            # The broker knows one password (the latest token's): any revocation removes broker access
            # until the next IssueDeviceToken, so a revoked token never keeps working over MQTT.
            await self._broker(self.broker.revoke_device(row.device_id) if self.broker else None)
        self._forget(row.device_id)
        return devices_pb2.RevokeDeviceCredentialsResponse(revoked=revoked)

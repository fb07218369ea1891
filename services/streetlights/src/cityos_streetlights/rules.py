"""The fault rules of streetlights and their cabinets: what a reading means, as data.

A pure module (no I/O, no database, no clock of its own): the service hands `evaluate_light()` the
light's model (`LampModel`), its merged reading (`LightReading`), what is in force (`InForce`),
whether it is daylight there (`daylight()`), the `Limits` and whether an outage covers the light; it
gets back the faults that hold now (`Finding`s by kind), which `state` raises, updates and clears so
that exactly these stay open. `cabinet_outage()` and `feeder_dead()` judge a cabinet's readings,
`silent()` a controller's silence and `feeder_silent()` the root cause behind it. Kinds are the
proto's `FaultKind` values (`cityos.streetlights.v1.faults_pb2`), controller faults and phases the
inventory's, so a finding maps onto a `Fault` field for field.

Burning and dark
----------------
* **Burning**: the power measured in this reading is above `LampModel.burning_w` (the larger of the
  standby draw + 2 W and 10 % of the rated power); without a power in the reading, the controller's
  `on` flag says it.
* **Dark** (against an expected power E): the power measured is below 10 % of E; without a power in
  the reading, the `on` flag is off.
  A power measured in the same reading wins over the flag (a relay reported on with no current
  through the lamp is dark; a relay reported off with current through it burns). A power from an
  earlier reading judges nothing: after a switch it is stale, and the flag decides.
* **Expected power** at level L (%): `standby + rated x L' / 100`, L' = max(L, the model's minimum
  dimming level) for L > 0 (the driver does not go lower), and 0 for L = 0.

The light rules (each holds or not; the service keeps one open fault per light and kind)
------------------------------------------------------------------------------------------
* **LAMP_FAILURE**: the controller reports lamp failure, control-gear failure or thermal shutdown.
* **DAY_BURNER**: burning in daylight (between sunrise + margin and sunset - margin at the light,
  `solar.is_daylight`), or the controller's own `day_burner` flag in this reading; either way not
  when what is in force is an override asking for light (source OVERRIDE, level > 0: someone asked
  for it, e.g. for maintenance). A schedule asking for light by day does not excuse it (that is the
  schedule's fault, and the lamp burns for nothing).
* **LAMP_OUT**: what is in force says on (level > 0) since at least the grace (`lamp_out_grace_s`:
  the controller gets its desired state with its next uplink) and the lamp is dark against the
  expected power at that level. Not when LAMP_FAILURE holds (it explains the darkness), and not
  when the time the level took force is unknown.
* **POWER_ANOMALY**: burning, not dark, with a power in this reading more than the tolerance off
  the expected power at the level (the reported dimming level, else the level in force, else 100 %
  when the controller reports on): `|P - E| > tolerance x E` (exactly at the line: no). Not at level
  0, not when LAMP_FAILURE holds, and not while the controller reports thermal derating (the driver
  lowers its output on purpose).
* **RELAY_FAILURE**: the controller reports relay failure; or, inferred, what is in force says off
  (level 0) since at least the grace and the lamp still burns while it is not daylight. By day the
  same lamp is a DAY_BURNER, so a stuck relay is one fault at a time, not two.
* **Under an outage** (an open CABINET_OUTAGE of its cabinet or FEEDER_OUTAGE of its feeder, the
  root cause) a light gets none of LAMP_OUT, LAMP_FAILURE, POWER_ANOMALY and CONTROLLER_OFFLINE
  (`SYMPTOMS`); DAY_BURNER and RELAY_FAILURE still hold (a lamp burning without mains says something
  else is wrong).

Cabinets and feeders
--------------------
* **Cabinet outage**: every phase voltage the cabinet reports is below `outage_voltage_v` (at least
  one reported; a phase it does not report decides nothing).
* **Dead feeder**: its circuit's breaker is reported open (`circuit_<n>` 0), or its phase is below
  `outage_voltage_v` (L1, L2, L3: that phase; THREE: any of them; UNSPECIFIED: the breaker only).
* **Silence**: a controller is silent when `now - heard_time > timeout` (exactly at it: not yet). A
  feeder whose lights with controllers (at least 2) are all silent is dead, inferred, when no
  reading of its cabinet explains it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, TypeAlias

from cityos.streetlights.v1 import faults_pb2, inventory_pb2
from cityos_streetlights import solar

Kind: TypeAlias = faults_pb2.FaultKind.ValueType

LAMP_FAILURE: Final = faults_pb2.FAULT_KIND_LAMP_FAILURE
DAY_BURNER: Final = faults_pb2.FAULT_KIND_DAY_BURNER
LAMP_OUT: Final = faults_pb2.FAULT_KIND_LAMP_OUT
POWER_ANOMALY: Final = faults_pb2.FAULT_KIND_POWER_ANOMALY
RELAY_FAILURE: Final = faults_pb2.FAULT_KIND_RELAY_FAILURE
CONTROLLER_OFFLINE: Final = faults_pb2.FAULT_KIND_CONTROLLER_OFFLINE
CABINET_OUTAGE: Final = faults_pb2.FAULT_KIND_CABINET_OUTAGE
FEEDER_OUTAGE: Final = faults_pb2.FAULT_KIND_FEEDER_OUTAGE

#: The kinds `evaluate_light` decides from a reading (CONTROLLER_OFFLINE is the heartbeat's).
LIGHT_KINDS: Final[tuple[Kind, ...]] = (LAMP_FAILURE, DAY_BURNER, LAMP_OUT, POWER_ANOMALY, RELAY_FAILURE)
#: What an outage explains: a light under one gets none of these (open ones are folded into it).
SYMPTOMS: Final = frozenset({LAMP_OUT, CONTROLLER_OFFLINE, POWER_ANOMALY, LAMP_FAILURE})
#: The root causes.
OUTAGES: Final = frozenset({CABINET_OUTAGE, FEEDER_OUTAGE})

CF_LAMP_FAILURE: Final = inventory_pb2.CONTROLLER_FAULT_LAMP_FAILURE
CF_CONTROL_GEAR_FAILURE: Final = inventory_pb2.CONTROLLER_FAULT_CONTROL_GEAR_FAILURE
CF_RELAY_FAILURE: Final = inventory_pb2.CONTROLLER_FAULT_RELAY_FAILURE
CF_CYCLING: Final = inventory_pb2.CONTROLLER_FAULT_CYCLING
CF_THERMAL_DERATING: Final = inventory_pb2.CONTROLLER_FAULT_THERMAL_DERATING
CF_THERMAL_SHUTDOWN: Final = inventory_pb2.CONTROLLER_FAULT_THERMAL_SHUTDOWN

#: The controller faults that mean the lamp does not light, with how details name them.
FAILURE_FLAGS: Final[Mapping[int, str]] = {
    CF_LAMP_FAILURE: "lamp failure",
    CF_CONTROL_GEAR_FAILURE: "control gear failure",
    CF_THERMAL_SHUTDOWN: "thermal shutdown",
}

OVERRIDE: Final = inventory_pb2.CONTROL_SOURCE_OVERRIDE
PHASE_L1: Final = inventory_pb2.PHASE_L1
PHASE_L2: Final = inventory_pb2.PHASE_L2
PHASE_L3: Final = inventory_pb2.PHASE_L3
PHASE_THREE: Final = inventory_pb2.PHASE_THREE
PHASE_NAMES: Final = ("L1", "L2", "L3")

#: Dark: below this share of the expected power.
DARK_SHARE: Final = 0.10
#: Burning: above the larger of standby + this (W) and DARK_SHARE of the rated power.
BURNING_OVER_STANDBY_W: Final = 2.0
#: The detail of a feeder outage inferred from silence (how the service tells it from a reported one).
INFERRED: Final = "inferred: every light on it is silent"


@dataclass(frozen=True, slots=True)
class Limits:
    """The rules' settings (`StreetlightsSettings`), and the energy meter's longest interval, which the
    same readings feed."""

    power_tolerance: float = 0.25
    day_burner_margin: timedelta = timedelta(minutes=30)
    lamp_out_grace: timedelta = timedelta(minutes=15)
    outage_voltage_v: float = 100.0
    energy_max_gap_s: float = 6 * 3600.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.power_tolerance) and 0 < self.power_tolerance <= 1):
            raise ValueError(f"power_tolerance must be in (0, 1], not {self.power_tolerance!r}")
        if not (math.isfinite(self.outage_voltage_v) and self.outage_voltage_v > 0):
            raise ValueError(f"outage_voltage_v must be > 0, not {self.outage_voltage_v!r}")
        if self.day_burner_margin < timedelta(0) or self.lamp_out_grace < timedelta(0):
            raise ValueError("day_burner_margin and lamp_out_grace must not be negative")

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        """The limits of a `StreetlightsSettings`."""
        return cls(
            power_tolerance=settings.power_tolerance,
            day_burner_margin=timedelta(seconds=settings.day_burner_margin_s),
            lamp_out_grace=timedelta(seconds=settings.lamp_out_grace_s),
            outage_voltage_v=settings.outage_voltage_v,
            energy_max_gap_s=settings.energy_max_gap_s,
        )


@dataclass(frozen=True, slots=True)
class LampModel:
    """What a light's power is judged against (its `LightModel`)."""

    rated_power_w: float
    standby_power_w: float = 0.0
    minimum_dim_level: int = 0

    def expected_w(self, level: float) -> float:
        """The power at dimming level `level` (%): standby + rated x level / 100, the level raised to the
        model's minimum when above 0."""
        if level <= 0:
            return self.standby_power_w
        effective = min(max(level, float(self.minimum_dim_level)), 100.0)
        return self.standby_power_w + self.rated_power_w * effective / 100.0

    @property
    def burning_w(self) -> float:
        """Above this the lamp burns."""
        return max(self.standby_power_w + BURNING_OVER_STANDBY_W, DARK_SHARE * self.rated_power_w)


@dataclass(frozen=True, slots=True)
class LightReading:
    """A light controller's state after a reading: the states (`on`, `dim_level`, the controller's
    faults) merged with what earlier readings said, the measurements (`power_w`, `voltage_v`) and the
    `day_burner` flag as this reading carries them (None: not in it)."""

    time: datetime
    on: bool | None = None
    dim_level: float | None = None
    power_w: float | None = None
    voltage_v: float | None = None
    controller_faults: frozenset[int] = frozenset()
    day_burner: bool | None = None


@dataclass(frozen=True, slots=True)
class InForce:
    """What is in force for the light: the desired level (None: nothing), its source, since when."""

    level: int | None = None
    source: int = inventory_pb2.CONTROL_SOURCE_UNSPECIFIED
    since: datetime | None = None

    @property
    def asks_for_light(self) -> bool:
        """An override asking for light: an explicit request, whatever the sun does."""
        return self.source == OVERRIDE and (self.level or 0) > 0

    def held(self, now: datetime, grace: timedelta) -> bool:
        """In force since at least `grace` before `now` (False when since when is unknown)."""
        return self.since is not None and now - self.since >= grace


@dataclass(frozen=True, slots=True)
class Finding:
    """A fault that holds: what was measured, what was expected, and in words."""

    kind: Kind
    value: float = 0.0
    expected: float = 0.0
    detail: str = ""


def _w(value: float) -> str:
    return f"{value:.0f} W"


def burning(model: LampModel, reading: LightReading) -> bool | None:
    """Whether the lamp burns (None: the reading cannot tell)."""
    if reading.power_w is not None:
        return reading.power_w > model.burning_w
    return reading.on


def dark(expected_w: float, reading: LightReading) -> bool | None:
    """Whether the lamp is dark against the expected power (None: the reading cannot tell)."""
    if reading.power_w is not None:
        return reading.power_w < DARK_SHARE * expected_w
    return None if reading.on is None else not reading.on


def daylight(latitude: float, longitude: float, when: datetime, limits: Limits) -> bool:
    """Day-burner daylight at the place: between sunrise + margin and sunset - margin."""
    return solar.is_daylight(latitude, longitude, when, limits.day_burner_margin)


def evaluate_light(
    model: LampModel,
    reading: LightReading,
    in_force: InForce,
    *,
    daylight: bool,
    limits: Limits,
    under_outage: bool = False,
) -> dict[Kind, Finding]:
    """The faults of the light that hold after this reading (see the module docstring), by kind."""
    found: dict[Kind, Finding] = {}
    burns = burning(model, reading)
    power = reading.power_w
    shown = "" if power is None else f" (power {_w(power)})"

    failures = [name for flag, name in FAILURE_FLAGS.items() if flag in reading.controller_faults]
    if failures:
        found[LAMP_FAILURE] = Finding(
            LAMP_FAILURE, power or 0.0, 0.0, f"the controller reports {', '.join(failures)}"
        )

    if not in_force.asks_for_light:
        if burns and daylight:
            found[DAY_BURNER] = Finding(
                DAY_BURNER, power or 0.0, model.standby_power_w, f"burning in daylight{shown}"
            )
        elif reading.day_burner:
            found[DAY_BURNER] = Finding(
                DAY_BURNER, power or 0.0, model.standby_power_w, f"the controller reports day burning{shown}"
            )

    level = in_force.level
    if (
        level is not None
        and level > 0
        and LAMP_FAILURE not in found
        and in_force.held(reading.time, limits.lamp_out_grace)
    ):
        expected = model.expected_w(level)
        if dark(expected, reading):
            found[LAMP_OUT] = Finding(
                LAMP_OUT,
                power or 0.0,
                expected,
                f"dark{shown} while {level} % is in force (expected {_w(expected)})",
            )

    judged = reading.dim_level if reading.dim_level is not None else level
    if judged is None and reading.on:
        judged = 100
    if (
        power is not None
        and burns
        and judged is not None
        and judged > 0
        and LAMP_FAILURE not in found
        and CF_THERMAL_DERATING not in reading.controller_faults
    ):
        expected = model.expected_w(judged)
        if not dark(expected, reading) and abs(power - expected) > limits.power_tolerance * expected:
            found[POWER_ANOMALY] = Finding(
                POWER_ANOMALY,
                power,
                expected,
                f"power {_w(power)}, expected {_w(expected)} ± {limits.power_tolerance * 100:.0f} % "
                f"at {judged:g} %",
            )

    if CF_RELAY_FAILURE in reading.controller_faults:
        found[RELAY_FAILURE] = Finding(
            RELAY_FAILURE, power or 0.0, 0.0, "the controller reports relay failure"
        )
    elif level == 0 and burns and not daylight and in_force.held(reading.time, limits.lamp_out_grace):
        found[RELAY_FAILURE] = Finding(
            RELAY_FAILURE,
            power or 0.0,
            model.standby_power_w,
            f"burning{shown} though off is in force (a stuck relay)",
        )

    if under_outage:
        for kind in SYMPTOMS:
            found.pop(kind, None)
    return found


# -- cabinets and feeders ------------------------------------------------------------------------------


def _phases(voltages: Sequence[float | None]) -> str:
    return ", ".join(
        f"{name} {value:.0f} V"
        for name, value in zip(PHASE_NAMES, voltages, strict=False)
        if value is not None
    )


def cabinet_outage(voltages: Sequence[float | None], limits: Limits) -> Finding | None:
    """A CABINET_OUTAGE when every reported phase voltage (L1, L2, L3; None: not reported) is below
    the outage voltage."""
    reported = [value for value in voltages if value is not None]
    if not reported or any(value >= limits.outage_voltage_v for value in reported):
        return None
    return Finding(
        CABINET_OUTAGE,
        max(reported),
        limits.outage_voltage_v,
        f"mains lost: every phase below {limits.outage_voltage_v:g} V ({_phases(voltages)})",
    )


def feeder_dead(
    circuit: int,
    phase: int,
    voltages: Sequence[float | None],
    circuits: Mapping[int, bool],
    limits: Limits,
) -> Finding | None:
    """A FEEDER_OUTAGE when the feeder's breaker is reported open or its phase is dead."""
    if circuits.get(circuit) is False:
        return Finding(FEEDER_OUTAGE, 0.0, 0.0, f"the breaker of circuit {circuit} is open")
    if phase == PHASE_THREE:
        indexes = [0, 1, 2]
    elif phase in (PHASE_L1, PHASE_L2, PHASE_L3):
        indexes = [int(phase) - int(PHASE_L1)]
    else:
        indexes = []
    for index in indexes:
        value = voltages[index] if index < len(voltages) else None
        if value is not None and value < limits.outage_voltage_v:
            return Finding(
                FEEDER_OUTAGE,
                value,
                limits.outage_voltage_v,
                f"phase {PHASE_NAMES[index]} at {value:.0f} V (below {limits.outage_voltage_v:g} V)",
            )
    return None


# -- silence ---------------------------------------------------------------------------------------------


def silent(heard_time: datetime | None, timeout: timedelta, now: datetime) -> bool:
    """Silent past the timeout (never heard: not judged)."""
    return heard_time is not None and now - heard_time > timeout


@dataclass(frozen=True, slots=True)
class Listener:
    """A light with a controller as the silence rules see it."""

    light_id: str
    heard_time: datetime | None
    timeout: timedelta = field(default=timedelta(hours=2))


def feeder_silent(lights: Sequence[Listener], now: datetime) -> bool:
    """Every light on the feeder that has been heard (at least 2 of them) is silent now."""
    heard = [light for light in lights if light.heard_time is not None]
    return len(heard) >= 2 and all(silent(light.heard_time, light.timeout, now) for light in heard)

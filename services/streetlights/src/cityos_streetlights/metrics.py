"""What light and cabinet controllers report on the devices feed, and the command they obey.

A light controller is a device of type `streetlight.controller` (`StreetlightsSettings.controller_type`),
after LwM2M 3311 Light Control and 3416 Outdoor lamp controller; a cabinet controller is a device of
type `streetlight.cabinet`. A reading may carry any subset of the metrics: what it leaves out keeps its
last value. Flags are true at 0.5 and above. Other metrics are ignored.

Light controllers obey the command `set_light` (parameters `dim_level`, 0 to 100, 0 is off) and apply
the desired state `{"dim_level": n}` on their twin; both are what the service sends (control jobs and
schedules).
"""

from __future__ import annotations

# name -> (unit, lowest, highest): the device models register them so the devices service checks ranges.
CONTROLLER_METRICS: dict[str, tuple[str, float, float]] = {
    "on": ("1", 0, 1),  # 3311/5850 On/Off: the lamp burns
    "dim_level": ("%", 0, 100),  # 3311/5851 Dimmer
    "power_w": ("W", 0, 5000),  # 3416 light source active power
    "voltage_v": ("V", 0, 500),  # supply voltage
    "current_a": ("A", 0, 50),
    "power_factor": ("1", 0, 1),
    "energy_wh": ("Wh", 0, 1e12),  # 3311/5805 cumulative active power (lifetime meter)
    "operating_hours": ("h", 0, 1e7),  # 3416 lamp operating hours
    "switch_count": ("1", 0, 1e9),  # 3416 lamp switch counter
    "lamp_failure": ("1", 0, 1),  # 3416 flags
    "control_gear_failure": ("1", 0, 1),
    "relay_failure": ("1", 0, 1),
    "day_burner": ("1", 0, 1),
    "cycling": ("1", 0, 1),
    "thermal_derating": ("1", 0, 1),
    "thermal_shutdown": ("1", 0, 1),
    "rsrp_dbm": ("dBm", -150, 0),
}
MAX_CIRCUITS = 64
CABINET_METRICS: dict[str, tuple[str, float, float]] = {
    "voltage_l1_v": ("V", 0, 500),
    "voltage_l2_v": ("V", 0, 500),
    "voltage_l3_v": ("V", 0, 500),
    "active_power_w": ("W", 0, 1e7),
    "energy_wh": ("Wh", 0, 1e13),
    "power_factor": ("1", 0, 1),
    "door_open": ("1", 0, 1),
    # circuit_<n>: the breaker of circuit n, 1 closed, 0 open (tripped).
    **{f"circuit_{n}": ("1", 0, 1) for n in range(1, MAX_CIRCUITS + 1)},
}
SET_LIGHT = "set_light"
DIM_LEVEL = "dim_level"

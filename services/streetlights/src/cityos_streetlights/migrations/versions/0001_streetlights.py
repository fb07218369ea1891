"""streetlights: models, cabinets, feeders, schedules, groups, lights, controls, faults, energy, cursors

Revision ID: streetlights_0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cityos_platform.models import UtcDateTime

revision: str = "streetlights_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cabinets",
        sa.Column("cabinet_id", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("working_mode", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=63), nullable=True),
        sa.Column("serial_number", sa.String(length=100), nullable=False),
        sa.Column("maximum_power_w", sa.Float(), nullable=False),
        sa.Column("voltage_l1_v", sa.Float(), nullable=True),
        sa.Column("voltage_l2_v", sa.Float(), nullable=True),
        sa.Column("voltage_l3_v", sa.Float(), nullable=True),
        sa.Column("active_power_w", sa.Float(), nullable=True),
        sa.Column("energy_wh", sa.Float(), nullable=True),
        sa.Column("power_factor", sa.Float(), nullable=True),
        sa.Column("circuits", sa.JSON(), nullable=False),
        sa.Column("door_open", sa.Boolean(), nullable=False),
        sa.Column("outage", sa.Boolean(), nullable=False),
        sa.Column("reading_time", UtcDateTime(), nullable=True),
        sa.Column("heard_time", UtcDateTime(), nullable=True),
        sa.Column("heartbeat_missed", sa.Boolean(), nullable=False),
        sa.Column("etag", sa.String(length=32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("owner_organization", sa.String(length=64), nullable=False),
        sa.Column("operator_organization", sa.String(length=64), nullable=False),
        sa.Column("maintainer_organization", sa.String(length=64), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=False),
        sa.Column("longitude", sa.Float(), nullable=False),
        sa.Column("area_cell", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("cabinet_id", name=op.f("pk_cabinets")),
        sa.UniqueConstraint("device_id", name=op.f("uq_cabinets_device_id")),
    )
    op.create_index(op.f("ix_cabinets_area_cell"), "cabinets", ["area_cell"], unique=False)
    op.create_index(op.f("ix_cabinets_heard_time"), "cabinets", ["heard_time"], unique=False)
    op.create_index(
        op.f("ix_cabinets_maintainer_organization"), "cabinets", ["maintainer_organization"], unique=False
    )
    op.create_index(
        op.f("ix_cabinets_operator_organization"), "cabinets", ["operator_organization"], unique=False
    )
    op.create_index(op.f("ix_cabinets_owner_organization"), "cabinets", ["owner_organization"], unique=False)
    op.create_table(
        "controls",
        sa.Column("control_id", sa.String(length=63), nullable=False),
        sa.Column("selector", sa.JSON(), nullable=False),
        sa.Column("dim_level", sa.Integer(), nullable=False),
        sa.Column("override_until", UtcDateTime(), nullable=True),
        sa.Column("rollout_per_minute", sa.Integer(), nullable=False),
        sa.Column("abort_failure_ratio", sa.Float(), nullable=False),
        sa.Column("abort_min_finished", sa.Integer(), nullable=False),
        sa.Column("command_ttl_s", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=63), nullable=True),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("lights", sa.Integer(), nullable=False),
        sa.Column("without_device", sa.Integer(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("owner_organization", sa.String(length=64), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("control_id", name=op.f("pk_controls")),
    )
    op.create_index(op.f("ix_controls_create_time"), "controls", ["create_time"], unique=False)
    op.create_index(op.f("ix_controls_owner_organization"), "controls", ["owner_organization"], unique=False)
    op.create_index(op.f("ix_controls_state"), "controls", ["state"], unique=False)
    op.create_table(
        "energy_hours",
        sa.Column("light_id", sa.String(length=63), nullable=False),
        sa.Column("hour", UtcDateTime(), nullable=False),
        sa.Column("group_id", sa.String(length=63), nullable=True),
        sa.Column("cabinet_id", sa.String(length=63), nullable=True),
        sa.Column("energy_wh", sa.Float(), nullable=False),
        sa.Column("full_power_wh", sa.Float(), nullable=False),
        sa.Column("burning_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("light_id", "hour", name=op.f("pk_energy_hours")),
    )
    op.create_index("ix_energy_hours_cabinet_hour", "energy_hours", ["cabinet_id", "hour"], unique=False)
    op.create_index("ix_energy_hours_group_hour", "energy_hours", ["group_id", "hour"], unique=False)
    op.create_table(
        "faults",
        sa.Column("fault_id", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=80), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("affected_lights", sa.JSON(), nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("expected", sa.Float(), nullable=False),
        sa.Column("raise_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("clear_time", UtcDateTime(), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=200), nullable=False),
        sa.Column("acknowledge_time", UtcDateTime(), nullable=True),
        sa.Column("area_cell", sa.String(length=16), nullable=False),
        sa.Column("owner_organization", sa.String(length=64), nullable=False),
        sa.Column("operator_organization", sa.String(length=64), nullable=False),
        sa.Column("maintainer_organization", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("fault_id", name=op.f("pk_faults")),
    )
    op.create_index(op.f("ix_faults_area_cell"), "faults", ["area_cell"], unique=False)
    op.create_index(op.f("ix_faults_kind"), "faults", ["kind"], unique=False)
    op.create_index(op.f("ix_faults_owner_organization"), "faults", ["owner_organization"], unique=False)
    op.create_index(op.f("ix_faults_raise_time"), "faults", ["raise_time"], unique=False)
    op.create_index(op.f("ix_faults_state"), "faults", ["state"], unique=False)
    op.create_index(op.f("ix_faults_subject"), "faults", ["subject"], unique=False)
    op.create_index(
        "uq_faults_open_subject_kind",
        "faults",
        ["subject", "kind"],
        unique=True,
        postgresql_where=sa.text("state <> 3"),
        sqlite_where=sa.text("state <> 3"),
    )
    op.create_table(
        "feed_cursors",
        sa.Column("feed", sa.String(length=63), nullable=False),
        sa.Column("cursor", sa.String(length=200), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("feed", name=op.f("pk_feed_cursors")),
    )
    op.create_table(
        "light_models",
        sa.Column("light_model_id", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("lamp_technology", sa.Integer(), nullable=False),
        sa.Column("rated_power_w", sa.Float(), nullable=False),
        sa.Column("standby_power_w", sa.Float(), nullable=False),
        sa.Column("luminous_flux_lm", sa.Float(), nullable=False),
        sa.Column("color_temperature_k", sa.Integer(), nullable=False),
        sa.Column("working_life_h", sa.Integer(), nullable=False),
        sa.Column("minimum_dim_level", sa.Integer(), nullable=False),
        sa.Column("manufacturer", sa.String(length=100), nullable=False),
        sa.Column("etag", sa.String(length=32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("owner_organization", sa.String(length=64), nullable=False),
        sa.Column("operator_organization", sa.String(length=64), nullable=False),
        sa.Column("maintainer_organization", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("light_model_id", name=op.f("pk_light_models")),
    )
    op.create_index(
        op.f("ix_light_models_maintainer_organization"),
        "light_models",
        ["maintainer_organization"],
        unique=False,
    )
    op.create_index(
        op.f("ix_light_models_operator_organization"), "light_models", ["operator_organization"], unique=False
    )
    op.create_index(
        op.f("ix_light_models_owner_organization"), "light_models", ["owner_organization"], unique=False
    )
    op.create_table(
        "schedules",
        sa.Column("schedule_id", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("etag", sa.String(length=32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("owner_organization", sa.String(length=64), nullable=False),
        sa.Column("operator_organization", sa.String(length=64), nullable=False),
        sa.Column("maintainer_organization", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("schedule_id", name=op.f("pk_schedules")),
    )
    op.create_index(
        op.f("ix_schedules_maintainer_organization"), "schedules", ["maintainer_organization"], unique=False
    )
    op.create_index(
        op.f("ix_schedules_operator_organization"), "schedules", ["operator_organization"], unique=False
    )
    op.create_index(
        op.f("ix_schedules_owner_organization"), "schedules", ["owner_organization"], unique=False
    )
    op.create_table(
        "feeders",
        sa.Column("feeder_id", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("cabinet_id", sa.String(length=63), nullable=False),
        sa.Column("circuit", sa.Integer(), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("energized", sa.Boolean(), nullable=False),
        sa.Column("etag", sa.String(length=32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["cabinet_id"], ["cabinets.cabinet_id"], name=op.f("fk_feeders_cabinet_id_cabinets")
        ),
        sa.PrimaryKeyConstraint("feeder_id", name=op.f("pk_feeders")),
        sa.UniqueConstraint("cabinet_id", "circuit", name="uq_feeders_cabinet_circuit"),
    )
    op.create_index(op.f("ix_feeders_cabinet_id"), "feeders", ["cabinet_id"], unique=False)
    op.create_table(
        "groups",
        sa.Column("group_id", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("cabinet_id", sa.String(length=63), nullable=True),
        sa.Column("schedule_id", sa.String(length=63), nullable=True),
        sa.Column("etag", sa.String(length=32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("owner_organization", sa.String(length=64), nullable=False),
        sa.Column("operator_organization", sa.String(length=64), nullable=False),
        sa.Column("maintainer_organization", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["cabinet_id"], ["cabinets.cabinet_id"], name=op.f("fk_groups_cabinet_id_cabinets")
        ),
        sa.ForeignKeyConstraint(
            ["schedule_id"], ["schedules.schedule_id"], name=op.f("fk_groups_schedule_id_schedules")
        ),
        sa.PrimaryKeyConstraint("group_id", name=op.f("pk_groups")),
    )
    op.create_index(op.f("ix_groups_cabinet_id"), "groups", ["cabinet_id"], unique=False)
    op.create_index(
        op.f("ix_groups_maintainer_organization"), "groups", ["maintainer_organization"], unique=False
    )
    op.create_index(
        op.f("ix_groups_operator_organization"), "groups", ["operator_organization"], unique=False
    )
    op.create_index(op.f("ix_groups_owner_organization"), "groups", ["owner_organization"], unique=False)
    op.create_index(op.f("ix_groups_schedule_id"), "groups", ["schedule_id"], unique=False)
    op.create_table(
        "lights",
        sa.Column("light_id", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("light_model_id", sa.String(length=63), nullable=False),
        sa.Column("feeder_id", sa.String(length=63), nullable=True),
        sa.Column("cabinet_id", sa.String(length=63), nullable=True),
        sa.Column("group_id", sa.String(length=63), nullable=True),
        sa.Column("device_id", sa.String(length=63), nullable=True),
        sa.Column("pole_number", sa.String(length=50), nullable=False),
        sa.Column("street", sa.String(length=200), nullable=False),
        sa.Column("location_category", sa.String(length=32), nullable=False),
        sa.Column("lantern_height_m", sa.Float(), nullable=False),
        sa.Column("last_lamp_change_time", UtcDateTime(), nullable=True),
        sa.Column("reported_status", sa.Integer(), nullable=False),
        sa.Column("heartbeat_timeout_s", sa.Integer(), nullable=False),
        sa.Column("power_state", sa.Integer(), nullable=False),
        sa.Column("dim_level", sa.Float(), nullable=True),
        sa.Column("power_w", sa.Float(), nullable=True),
        sa.Column("voltage_v", sa.Float(), nullable=True),
        sa.Column("current_a", sa.Float(), nullable=True),
        sa.Column("power_factor", sa.Float(), nullable=True),
        sa.Column("energy_wh", sa.Float(), nullable=True),
        sa.Column("operating_hours", sa.Float(), nullable=True),
        sa.Column("switch_count", sa.Float(), nullable=True),
        sa.Column("controller_faults", sa.JSON(), nullable=False),
        sa.Column("reading_time", UtcDateTime(), nullable=True),
        sa.Column("heard_time", UtcDateTime(), nullable=True),
        sa.Column("heartbeat_missed", sa.Boolean(), nullable=False),
        sa.Column("desired_level", sa.Integer(), nullable=True),
        sa.Column("desired_source", sa.Integer(), nullable=False),
        sa.Column("desired_schedule_id", sa.String(length=63), nullable=True),
        sa.Column("desired_step", sa.Integer(), nullable=True),
        sa.Column("desired_since", UtcDateTime(), nullable=True),
        sa.Column("next_change_time", UtcDateTime(), nullable=True),
        sa.Column("override_control_id", sa.String(length=63), nullable=True),
        sa.Column("override_until", UtcDateTime(), nullable=True),
        sa.Column("etag", sa.String(length=32), nullable=False),
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("owner_organization", sa.String(length=64), nullable=False),
        sa.Column("operator_organization", sa.String(length=64), nullable=False),
        sa.Column("maintainer_organization", sa.String(length=64), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=False),
        sa.Column("longitude", sa.Float(), nullable=False),
        sa.Column("area_cell", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["feeder_id"], ["feeders.feeder_id"], name=op.f("fk_lights_feeder_id_feeders")
        ),
        sa.ForeignKeyConstraint(["group_id"], ["groups.group_id"], name=op.f("fk_lights_group_id_groups")),
        sa.ForeignKeyConstraint(
            ["light_model_id"],
            ["light_models.light_model_id"],
            name=op.f("fk_lights_light_model_id_light_models"),
        ),
        sa.PrimaryKeyConstraint("light_id", name=op.f("pk_lights")),
        sa.UniqueConstraint("device_id", name=op.f("uq_lights_device_id")),
    )
    op.create_index(op.f("ix_lights_area_cell"), "lights", ["area_cell"], unique=False)
    op.create_index(op.f("ix_lights_cabinet_id"), "lights", ["cabinet_id"], unique=False)
    op.create_index(op.f("ix_lights_feeder_id"), "lights", ["feeder_id"], unique=False)
    op.create_index(op.f("ix_lights_group_id"), "lights", ["group_id"], unique=False)
    op.create_index(op.f("ix_lights_heard_time"), "lights", ["heard_time"], unique=False)
    op.create_index(op.f("ix_lights_light_model_id"), "lights", ["light_model_id"], unique=False)
    op.create_index(
        op.f("ix_lights_maintainer_organization"), "lights", ["maintainer_organization"], unique=False
    )
    op.create_index(
        op.f("ix_lights_operator_organization"), "lights", ["operator_organization"], unique=False
    )
    op.create_index(op.f("ix_lights_override_control_id"), "lights", ["override_control_id"], unique=False)
    op.create_index(op.f("ix_lights_override_until"), "lights", ["override_until"], unique=False)
    op.create_index(op.f("ix_lights_owner_organization"), "lights", ["owner_organization"], unique=False)
    op.create_index(op.f("ix_lights_street"), "lights", ["street"], unique=False)


def downgrade() -> None:
    op.drop_table("lights")
    op.drop_table("groups")
    op.drop_table("feeders")
    op.drop_table("schedules")
    op.drop_table("light_models")
    op.drop_table("feed_cursors")
    op.drop_table("faults")
    op.drop_table("energy_hours")
    op.drop_table("controls")
    op.drop_table("cabinets")

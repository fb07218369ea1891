"""HLM-6 (realm half): the realm the chart imports is the one in infra/keycloak, byte for byte, and the
bundled Keycloak is told to import it."""

from __future__ import annotations

import json

import pytest
from chart_support import CHART, ROOT, SKIP_REASON, chart_values

pytest.importorskip("helm_python", reason=SKIP_REASON)

import helm_check

SOURCE = ROOT / "infra" / "keycloak" / "cityos-realm.json"
COPY = CHART / "files" / "keycloak" / "cityos-realm.json"


@pytest.mark.req("HLM-6")
def test_the_chart_carries_the_realm_of_infra_keycloak() -> None:
    assert COPY.read_bytes() == SOURCE.read_bytes(), (
        "helm/cityos/files/keycloak/cityos-realm.json differs from infra/keycloak/cityos-realm.json: "
        "cp infra/keycloak/cityos-realm.json helm/cityos/files/keycloak/"
    )


@pytest.mark.req("HLM-6")
def test_the_bundled_keycloak_imports_that_realm() -> None:
    objects = helm_check.render_objects({"keycloak": {"enabled": True}})
    assert list(helm_check.validation_errors(objects)) == []
    realm = objects.named("ConfigMap", "cityos-cityos-realm")["data"]["cityos-realm.json"]
    assert json.loads(realm) == json.loads(SOURCE.read_text())
    assert json.loads(realm)["realm"] == "cityos"
    keycloak = chart_values()["keycloak"]
    assert "--import-realm" in keycloak["extraStartupArgs"]
    assert keycloak["extraVolumes"][0]["configMap"]["name"] == "{{ .Release.Name }}-cityos-realm"
    mount = keycloak["extraVolumeMounts"][0]
    assert mount["name"] == keycloak["extraVolumes"][0]["name"]
    config = objects.named("ConfigMap", "cityos-config")["data"]
    assert config["CITYOS_AUTH_ISSUER"] == "http://cityos-keycloak/realms/cityos"
    assert config["CITYOS_KEYCLOAK_URL"] == "http://cityos-keycloak"


def test_no_realm_configmap_without_the_bundled_keycloak() -> None:
    objects = helm_check.render_objects({})
    assert "cityos-cityos-realm" not in [obj["metadata"]["name"] for obj in objects.of_kind("ConfigMap")]

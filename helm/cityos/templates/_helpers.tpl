{{/*
Names, labels and the per-workload settings every template shares.
*/}}

{{- define "cityos.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release-wide prefix: "<release>-cityos", or the release name when it already says cityos. */}}
{{- define "cityos.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "cityos.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object of the release carries. */}}
{{- define "cityos.labels" -}}
helm.sh/chart: {{ include "cityos.chart" . }}
app.kubernetes.io/name: {{ include "cityos.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cityos
{{- end -}}

{{/* Selects every CityOS pod of this release (and nothing a subchart runs). */}}
{{- define "cityos.releaseSelector" -}}
app.kubernetes.io/name: {{ include "cityos.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: cityos
{{- end -}}

{{/* Selector labels of one workload; context: dict "root" $ "name" <workload>. */}}
{{- define "cityos.selectorLabels" -}}
{{ include "cityos.releaseSelector" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* The objects of one workload are named "<fullname>-<workload>". */}}
{{- define "cityos.workloadName" -}}
{{- printf "%s-%s" (include "cityos.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The list of enabled workloads, as JSON: [{"name": ..., "spec": <defaults merged with the entry>}],
sorted by name. Maps merge deeply; an entry's scalars and lists replace the defaults' (false and []
included).
*/}}
{{- define "cityos.workloads" -}}
{{- $out := list -}}
{{- range $name := keys .Values.services | sortAlpha -}}
{{- $entry := index $.Values.services $name | default dict -}}
{{- $spec := mustMergeOverwrite (deepCopy $.Values.defaults) (deepCopy $entry) -}}
{{- if $spec.enabled -}}
{{- $out = append $out (dict "name" $name "spec" $spec) -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{- define "cityos.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "cityos.configMapName" -}}
{{- printf "%s-config" (include "cityos.fullname" .) -}}
{{- end -}}

{{- define "cityos.generatedSecretName" -}}
{{- printf "%s-generated" (include "cityos.fullname" .) -}}
{{- end -}}

{{- define "cityos.pageTokenSecretName" -}}
{{- default (printf "%s-page-tokens" (include "cityos.fullname" .)) .Values.pageTokens.existingSecret -}}
{{- end -}}

{{/* The database name of a workload in the bundled PostgreSQL: cityos_<name with _ for ->. */}}
{{- define "cityos.databaseName" -}}
{{- printf "cityos_%s" (. | replace "-" "_") -}}
{{- end -}}

{{- define "cityos.authIssuer" -}}
{{- if .Values.auth.issuer -}}
{{- .Values.auth.issuer -}}
{{- else if .Values.keycloak.enabled -}}
{{- printf "http://%s-keycloak/realms/%s" .Release.Name .Values.keycloakAdmin.realm -}}
{{- end -}}
{{- end -}}

{{- define "cityos.otelEndpoint" -}}
{{- if .Values.otel.endpoint -}}
{{- .Values.otel.endpoint -}}
{{- else if (index .Values "opentelemetry-collector").enabled -}}
{{- printf "http://%s-opentelemetry-collector:4317" .Release.Name -}}
{{- end -}}
{{- end -}}

{{- define "cityos.objectStoreEndpoint" -}}
{{- if .Values.objectStore.endpoint -}}
{{- .Values.objectStore.endpoint -}}
{{- else if .Values.minio.enabled -}}
{{- printf "http://%s-minio:9000" .Release.Name -}}
{{- end -}}
{{- end -}}

{{- define "cityos.keycloakUrl" -}}
{{- if .Values.keycloakAdmin.url -}}
{{- .Values.keycloakAdmin.url -}}
{{- else if .Values.keycloak.enabled -}}
{{- printf "http://%s-keycloak" .Release.Name -}}
{{- end -}}
{{- end -}}

{{/* Restricted Pod Security Standard: pod level. */}}
{{- define "cityos.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Restricted Pod Security Standard: container level. */}}
{{- define "cityos.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The init container's check: connect to the workload's database with the runtime's own engine and run
SELECT 1, retrying every 2 s until CITYOS_DATABASE_WAIT_S passes. The service migrates its schema when it
starts (there is no separate `cityos migrate` command yet), so waiting is all that must happen first.
*/}}
{{- define "cityos.waitForDatabaseScript" -}}
import asyncio, os, sys, time
from sqlalchemy import text
from cityos_platform.db import create_engine

async def main():
    deadline = time.monotonic() + float(os.environ["CITYOS_DATABASE_WAIT_S"])
    while True:
        engine = create_engine(os.environ["CITYOS_DATABASE_URL"])
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            print("database ready", flush=True)
            return 0
        except Exception as error:
            if time.monotonic() > deadline:
                print(f"database not ready in time: {type(error).__name__}: {error}", file=sys.stderr)
                return 1
            print(f"waiting for the database: {type(error).__name__}", flush=True)
            await asyncio.sleep(2)
        finally:
            await engine.dispose()

sys.exit(asyncio.run(main()))
{{- end -}}

{{/* The database variables of a workload; context: dict "root" $ "name" <workload>. */}}
{{- define "cityos.databaseEnv" -}}
{{- $root := .root -}}
{{- if $root.Values.database.existingSecret }}
- name: CITYOS_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.database.existingSecret }}
      key: {{ .name }}
{{- else if $root.Values.postgresql.enabled }}
- name: CITYOS_DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ printf "%s-postgresql" $root.Release.Name }}
      key: password
- name: CITYOS_DATABASE_URL
  value: {{ printf "postgresql://%s:$(CITYOS_DATABASE_PASSWORD)@%s-postgresql:5432/%s" $root.Values.postgresql.auth.username $root.Release.Name (include "cityos.databaseName" .name) | quote }}
{{- else }}
{{- fail (printf "services.%s needs a database: set database.existingSecret or postgresql.enabled" .name) }}
{{- end }}
{{- end -}}

{{/*
The identity service's issuer URL for the API-key tokens it signs ("" when identity is off).
*/}}
{{- define "cityos.identityIssuer" -}}
{{- $identity := index .Values.services "identity" | default dict -}}
{{- if and $identity (ne (toString (index $identity "enabled")) "false") -}}
{{- printf "http://%s:%d/realms/cityos-api-keys" (include "cityos.workloadName" (dict "root" . "name" "identity")) (int .Values.identityJwksPort) -}}
{{- end -}}
{{- end -}}

{{/*
The generated keys of one workload, as JSON: [{"variable", "generate", "key"}], key = "<workload>.<variable>"
in the Secret <release>-cityos-generated. An item of `generatedSecrets` is a variable name (48 random
letters and digits) or {name, generate: random | ed25519}. A variable the entry's `secretEnv` also names
comes from that Secret instead: it is neither generated nor set from the generated Secret.
Context: dict "name" <workload> "spec" <merged entry>.
*/}}
{{- define "cityos.generatedKeys" -}}
{{- $name := .name -}}
{{- $overridden := list -}}
{{- range .spec.secretEnv -}}
{{- $overridden = append $overridden .name -}}
{{- end -}}
{{- $out := list -}}
{{- range $item := .spec.generatedSecrets -}}
{{- $variable := $item -}}
{{- $generate := "random" -}}
{{- if kindIs "map" $item -}}
{{- $variable = $item.name -}}
{{- $generate = default "random" $item.generate -}}
{{- end -}}
{{- if not (has $variable $overridden) -}}
{{- $out = append $out (dict "variable" $variable "generate" $generate "key" (printf "%s.%s" $name $variable)) -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The prefix of a workload's own settings: CITYOS_<NAME>_ (mqtt-adapter: CITYOS_MQTT_ADAPTER_). */}}
{{- define "cityos.settingsPrefix" -}}
{{- printf "CITYOS_%s_" (. | upper | replace "-" "_") -}}
{{- end -}}

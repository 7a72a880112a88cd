{{/* Helpers of the agentmesh umbrella chart. */}}

{{- define "umbrella.labels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: agentmesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of an in-cluster dependency ("postgresql", "redis", "mock-llm"). */}}
{{- define "umbrella.selector" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ index . 1 }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
{{- end -}}

{{- define "umbrella.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ index . 0 }}
runAsGroup: {{ index . 1 }}
fsGroup: {{ index . 1 }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "umbrella.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The Postgres password: the value given, else the one in the cluster, else a new one. */}}
{{- define "umbrella.postgresPassword" -}}
{{- if .Values.postgresql.password -}}
{{- .Values.postgresql.password -}}
{{- else -}}
{{- $found := lookup "v1" "Secret" .Release.Namespace (printf "%s-postgresql" .Release.Name) -}}
{{- if and $found $found.data (hasKey $found.data "password") -}}
{{- index $found.data "password" | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Checks across values that the schema cannot express. */}}
{{- define "umbrella.validate" -}}
{{- $defaultDb := "{{ .Release.Name }}-database" -}}
{{- $defaultRedis := "{{ .Release.Name }}-redis" -}}
{{- $db := .Values.global.database.existingSecret -}}
{{- if and (eq $db $defaultDb) (not .Values.postgresql.enabled) (not .Values.externalDatabase.url) -}}
{{- fail "postgresql.enabled is false: set externalDatabase.url or global.database.existingSecret" -}}
{{- end -}}
{{- if and .Values.postgresql.enabled .Values.externalDatabase.url -}}
{{- fail "set postgresql.enabled=false when giving externalDatabase.url" -}}
{{- end -}}
{{- if and (eq .Values.global.redis.existingSecret $defaultRedis) (not .Values.redis.enabled) (not .Values.externalRedis.url) -}}
{{- fail "redis.enabled is false: set externalRedis.url or global.redis.existingSecret" -}}
{{- end -}}
{{- if and .Values.redis.enabled .Values.externalRedis.url -}}
{{- fail "set redis.enabled=false when giving externalRedis.url" -}}
{{- end -}}
{{- if .Values.migrations.enabled -}}
{{- if or .Values.postgresql.enabled .Values.externalDatabase.url (eq $db $defaultDb) (not $db) -}}
{{- fail "migrations.enabled runs before the release exists: it needs global.database.existingSecret naming a Secret you created (the services migrate at start anyway)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Helpers of the gateway chart. */}}

{{/* The admin key Secret as "name|key": an existing Secret, else the one this chart makes. */}}
{{- define "agentmesh.adminSecret" -}}
{{- if .Values.adminKey.existingSecret -}}
{{- printf "%s|%s" (tpl .Values.adminKey.existingSecret .) .Values.adminKey.existingSecretKey -}}
{{- else -}}
{{- printf "%s-admin|admin-key" (include "agentmesh.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
The admin key this chart stores: the value given, else the one already in the cluster (so an
upgrade keeps it), else a new random one.
*/}}
{{- define "agentmesh.adminKeyValue" -}}
{{- if .Values.adminKey.value -}}
{{- .Values.adminKey.value -}}
{{- else -}}
{{- $name := printf "%s-admin" (include "agentmesh.fullname" .) -}}
{{- $found := lookup "v1" "Secret" .Release.Namespace $name -}}
{{- if and $found $found.data (hasKey $found.data "admin-key") -}}
{{- index $found.data "admin-key" | b64dec -}}
{{- else -}}
{{- printf "am-admin-%s" (randAlphaNum 40) -}}
{{- end -}}
{{- end -}}
{{- end -}}

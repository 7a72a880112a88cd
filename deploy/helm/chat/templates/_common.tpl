{{/*
Helpers shared by every agentmesh service chart. This file is identical in the gateway, chat,
search and data charts; deploy/helm/check.sh fails when the copies drift apart.
*/}}

{{/* Chart name, overridable. */}}
{{- define "agentmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Object names are always <release>-<chart> so that other charts of the same release can find
them (the gateway reaches http://<release>-search-headless:50051).
*/}}
{{- define "agentmesh.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "agentmesh.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "agentmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "agentmesh.labels" -}}
{{ include "agentmesh.selectorLabels" . }}
app.kubernetes.io/part-of: agentmesh
app.kubernetes.io/component: {{ .Chart.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "agentmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "agentmesh.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image: this chart's values first, then the umbrella's global.image, then agentmesh:dev. */}}
{{- define "agentmesh.image" -}}
{{- $global := (.Values.global | default dict).image | default dict -}}
{{- $repo := .Values.image.repository | default $global.repository | default "agentmesh" -}}
{{- $tag := .Values.image.tag | default $global.tag | default "dev" -}}
{{- printf "%s:%s" $repo (toString $tag) -}}
{{- end -}}

{{- define "agentmesh.pullPolicy" -}}
{{- $global := (.Values.global | default dict).image | default dict -}}
{{- .Values.image.pullPolicy | default $global.pullPolicy | default "IfNotPresent" -}}
{{- end -}}

{{/*
A Secret reference for a connection URL ("database" or "redis"): this chart's values, else
the umbrella's global values (names may use templates, e.g. "{{ .Release.Name }}-database").
Renders "name|key", or nothing when the service should use its embedded default.
*/}}
{{- define "agentmesh.connectionSecret" -}}
{{- $ctx := index . 0 -}}
{{- $which := index . 1 -}}
{{- $local := index $ctx.Values $which | default dict -}}
{{- $global := index ($ctx.Values.global | default dict) $which | default dict -}}
{{- if $local.url -}}
{{- printf "%s|%s" (include "agentmesh.fullname" $ctx) $which -}}
{{- else if $local.existingSecret -}}
{{- printf "%s|%s" (tpl $local.existingSecret $ctx) ($local.existingSecretKey | default "url") -}}
{{- else if $global.existingSecret -}}
{{- printf "%s|%s" (tpl $global.existingSecret $ctx) ($global.existingSecretKey | default "url") -}}
{{- end -}}
{{- end -}}

{{/* Environment variables common to every service. */}}
{{- define "agentmesh.commonEnv" -}}
- name: AGENTMESH_LOG
  value: {{ .Values.log | default ((.Values.global | default dict).log) | default "info" | quote }}
- name: AGENTMESH_DATA_DIR
  value: /var/lib/agentmesh
{{- range $which := list "database" "redis" }}
{{- $ref := include "agentmesh.connectionSecret" (list $ $which) }}
{{- if $ref }}
- name: {{ printf "AGENTMESH_%s_URL" (upper $which) }}
  valueFrom:
    secretKeyRef:
      name: {{ index (splitList "|" $ref) 0 }}
      key: {{ index (splitList "|" $ref) 1 }}
{{- end }}
{{- end }}
{{- range $name, $url := .Values.agents }}
{{- if $url }}
- name: {{ printf "AGENTMESH_%s_URL" (upper $name) }}
  value: {{ tpl $url $ | quote }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Secret holding connection URLs given inline in this chart's values. */}}
{{- define "agentmesh.connectionsSecret" -}}
{{- if or (.Values.database | default dict).url (.Values.redis | default dict).url }}
apiVersion: v1
kind: Secret
metadata:
  name: {{ include "agentmesh.fullname" . }}
  labels:
    {{- include "agentmesh.labels" . | nindent 4 }}
type: Opaque
stringData:
  {{- with (.Values.database | default dict).url }}
  database: {{ . | quote }}
  {{- end }}
  {{- with (.Values.redis | default dict).url }}
  redis: {{ . | quote }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Pod and container security settings: non-root, read-only root, no capabilities. */}}
{{- define "agentmesh.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "agentmesh.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Shutdown: a pause before SIGTERM so that endpoints drop the pod before it stops listening.
The `sleep` action needs Kubernetes 1.30 or later (beta, on by default); on 1.29 it is left
out and the server's own drain on SIGTERM is all there is.
*/}}
{{- define "agentmesh.lifecycle" -}}
{{- if and (gt (int .Values.shutdown.preStopSleepSeconds) 0) (semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version) -}}
lifecycle:
  preStop:
    sleep:
      seconds: {{ .Values.shutdown.preStopSleepSeconds }}
{{- end }}
{{- end -}}

{{/* Value checks that JSON schema cannot express; rendering fails with a clear message. */}}
{{- define "agentmesh.validate" -}}
{{- $a := .Values.autoscaling -}}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) -}}
{{- fail (printf "%s: autoscaling.minReplicas (%v) is above autoscaling.maxReplicas (%v)" .Chart.Name $a.minReplicas $a.maxReplicas) -}}
{{- end -}}
{{- $s := .Values.shutdown -}}
{{- $need := add $s.preStopSleepSeconds $s.longestStreamSeconds -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $need) -}}
{{- fail (printf "%s: terminationGracePeriodSeconds (%v) must exceed shutdown.preStopSleepSeconds + shutdown.longestStreamSeconds (%v)" .Chart.Name .Values.terminationGracePeriodSeconds $need) -}}
{{- end -}}
{{- $p := .Values.podDisruptionBudget -}}
{{- if and $p.enabled (ne (toString $p.minAvailable) "0") (ne (toString $p.maxUnavailable) "0") -}}
{{- fail (printf "%s: set podDisruptionBudget.minAvailable or maxUnavailable, not both" .Chart.Name) -}}
{{- end -}}
{{- end -}}

{{/* Volumes every pod has: writable scratch space on an otherwise read-only filesystem. */}}
{{- define "agentmesh.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.scratch.tmpSizeLimit }}
- name: data
  emptyDir:
    sizeLimit: {{ .Values.scratch.dataSizeLimit }}
{{- end -}}

{{- define "agentmesh.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /var/lib/agentmesh
{{- end -}}

{{/* autoscaling/v2 HPA: CPU by default, or the in-flight requests metric (Pods metric). */}}
{{- define "agentmesh.hpa" -}}
{{- if .Values.autoscaling.enabled }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "agentmesh.fullname" . }}
  labels:
    {{- include "agentmesh.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "agentmesh.fullname" . }}
  minReplicas: {{ .Values.autoscaling.minReplicas }}
  maxReplicas: {{ .Values.autoscaling.maxReplicas }}
  metrics:
    {{- if .Values.autoscaling.inFlight.enabled }}
    - type: Pods
      pods:
        metric:
          name: {{ .Values.autoscaling.inFlight.metricName }}
        target:
          type: AverageValue
          averageValue: {{ .Values.autoscaling.inFlight.averageValue | quote }}
    {{- end }}
    {{- if gt (int .Values.autoscaling.targetCPUUtilizationPercentage) 0 }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .Values.autoscaling.targetCPUUtilizationPercentage }}
    {{- end }}
  behavior:
    {{- toYaml .Values.autoscaling.behavior | nindent 4 }}
{{- end }}
{{- end -}}

{{/* PodDisruptionBudget: keep most pods through node drains. */}}
{{- define "agentmesh.pdb" -}}
{{- if .Values.podDisruptionBudget.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "agentmesh.fullname" . }}
  labels:
    {{- include "agentmesh.labels" . | nindent 4 }}
spec:
  {{- if ne (toString .Values.podDisruptionBudget.minAvailable) "0" }}
  minAvailable: {{ .Values.podDisruptionBudget.minAvailable }}
  {{- else }}
  maxUnavailable: {{ .Values.podDisruptionBudget.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "agentmesh.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{- define "agentmesh.serviceAccount" -}}
{{- if .Values.serviceAccount.create }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "agentmesh.serviceAccountName" . }}
  labels:
    {{- include "agentmesh.labels" . | nindent 4 }}
automountServiceAccountToken: false
{{- end }}
{{- end -}}

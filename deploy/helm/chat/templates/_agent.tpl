{{/*
Helpers of the agent charts (chat, search, data). The templates of these three charts are
identical; deploy/helm/check.sh fails when they drift apart.
*/}}

{{/*
The provider key Secret as "name|key": this chart's existingSecret, else the Secret this
chart makes from llm.apiKey, else the umbrella's global.llm.existingSecret. Empty: no key.
*/}}
{{- define "agentmesh.llmSecret" -}}
{{- $global := (.Values.global | default dict).llm | default dict -}}
{{- if .Values.llm.existingSecret -}}
{{- printf "%s|%s" (tpl .Values.llm.existingSecret .) (.Values.llm.existingSecretKey | default "api-key") -}}
{{- else if .Values.llm.apiKey -}}
{{- printf "%s-llm|api-key" (include "agentmesh.fullname" .) -}}
{{- else if $global.existingSecret -}}
{{- printf "%s|%s" (tpl $global.existingSecret .) ($global.existingSecretKey | default "api-key") -}}
{{- end -}}
{{- end -}}

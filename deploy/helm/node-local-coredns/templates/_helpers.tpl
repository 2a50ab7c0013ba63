{{- define "nlc.labels" -}}
app.kubernetes.io/name: node-local-coredns
app.kubernetes.io/part-of: node-local-coredns
{{- end }}

{{- define "nlc.selector" -}}
app.kubernetes.io/name: node-local-coredns
{{- end }}

{{- define "nlc.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Flags shared by the agent, its readiness check and the watchdog. */}}
{{- define "nlc.commonArgs" -}}
{{- if .Values.localIP }}
- --local-ip={{ .Values.localIP }}
{{- end }}
- --iptables-mode={{ .Values.iptablesMode }}
{{- end }}

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
- --netfilter={{ .Values.netfilter }}
{{- end }}

{{/*
A container's securityContext: a non-root user with every capability
dropped but those its process uses (the image's binary holds them as file
capabilities and raises them itself). The list given is the container's
own; NET_RAW (iptables-legacy's raw socket) and DAC_READ_SEARCH
(iptables-legacy opening the node's /run/xtables.lock, root-only when the
node's first iptables created it) go to the iptables tools only, and only
where the legacy backend may be read or used: netfilter auto or
iptables-legacy.
*/}}
{{- define "nlc.securityContext" -}}
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
capabilities:
  drop: ["ALL"]
  {{- $caps := .caps }}
  {{- if has .root.Values.netfilter (list "auto" "iptables-legacy") }}
  {{- $caps = concat $caps (list "NET_RAW" "DAC_READ_SEARCH") }}
  {{- end }}
  add: [{{ range $i, $c := $caps }}{{ if $i }}, {{ end }}"{{ $c }}"{{ end }}]
{{- end }}

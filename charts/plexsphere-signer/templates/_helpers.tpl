{{- define "signer.name" -}}{{ .Release.Name }}{{- end -}}

{{- define "signer.labels" -}}
app.kubernetes.io/name: plexsphere-signer
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "signer.selector" -}}
app.kubernetes.io/name: plexsphere-signer
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Render-time checks for combinations the schema cannot express. */}}
{{- define "signer.validate" -}}
{{- if and (eq .Values.store.type "bbolt") (gt (int .Values.replicaCount) 1) -}}
{{- fail "store.type=bbolt serves one replica: set replicaCount to 1 or use store.type=postgres" -}}
{{- end -}}
{{- if and (eq .Values.store.type "postgres") (not .Values.store.postgres.dsnSecret.name) -}}
{{- fail "store.postgres.dsnSecret.name is required with store.type=postgres" -}}
{{- end -}}
{{- if and (eq .Values.provider.type "local") (not .Values.provider.local.kekSecret.name) -}}
{{- fail "provider.local.kekSecret.name is required with provider.type=local" -}}
{{- end -}}
{{- if and (eq .Values.provider.type "pkcs11") (not .Values.provider.pkcs11.pinSecret.name) -}}
{{- fail "provider.pkcs11.pinSecret.name is required with provider.type=pkcs11" -}}
{{- end -}}
{{- range .Values.rotationAllowSpiffeIDs -}}
{{- if has . $.Values.allowSpiffeIDs -}}
{{- fail (printf "%s is on both allow-lists: the core's identity must never rotate keys" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}

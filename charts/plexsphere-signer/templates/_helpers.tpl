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
{{- $pg := .Values.store.postgres -}}
{{- if eq .Values.store.type "postgres" -}}
{{- if not $pg.dsnSecret.name -}}
{{- fail "store.postgres.dsnSecret.name is required with store.type=postgres" -}}
{{- end -}}
{{- if eq $pg.migration.mode "job" -}}
{{- if not $pg.migration.ownerDsnSecret.name -}}
{{- fail "store.postgres.migration.ownerDsnSecret.name is required with migration.mode=job: the schema owner's DSN, in a Secret of its own" -}}
{{- end -}}
{{- if eq $pg.migration.ownerDsnSecret.name $pg.dsnSecret.name -}}
{{- fail "store.postgres.migration.ownerDsnSecret must be another Secret than store.postgres.dsnSecret: the signer pods must never see the owner's credentials" -}}
{{- end -}}
{{- if not $pg.migration.runtimeRole -}}
{{- fail "store.postgres.migration.runtimeRole is required with migration.mode=job: the role the signer connects as, granted by the migration" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.identity.mode "files") (not .Values.identity.files.secretName) -}}
{{- fail "identity.files.secretName is required with identity.mode=files" -}}
{{- end -}}
{{- if and (eq .Values.provider.type "local") (not .Values.provider.local.kekSecret.name) -}}
{{- fail "provider.local.kekSecret.name is required with provider.type=local" -}}
{{- end -}}
{{- if and (eq .Values.provider.type "pkcs11") (not .Values.provider.pkcs11.pinSecret.name) -}}
{{- fail "provider.pkcs11.pinSecret.name is required with provider.type=pkcs11" -}}
{{- end -}}
{{- if and .Values.jwks.enabled (not .Values.jwks.tlsSecret.name) -}}
{{- fail "jwks.tlsSecret.name is required with jwks.enabled: a kubernetes.io/tls Secret with a certificate the verifiers trust" -}}
{{- end -}}
{{- range .Values.rotationAllowSpiffeIDs -}}
{{- if has . $.Values.allowSpiffeIDs -}}
{{- fail (printf "%s is on both allow-lists: the core's identity must never rotate keys" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}


{{- define "signer.dnsEgress" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end -}}

{{/* Postgres: by CIDR (outside the cluster) and/or by pod labels (inside). */}}
{{- define "signer.postgresEgress" -}}
{{- $p := .Values.networkPolicy.postgres -}}
{{- if and (eq .Values.store.type "postgres") (or $p.cidrs $p.podLabels) -}}
- to:
    {{- range $p.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
    {{- if $p.podLabels }}
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ $p.namespace | default .Release.Namespace }}
      podSelector:
        matchLabels:
          {{- toYaml $p.podLabels | nindent 10 }}
    {{- end }}
  ports:
    - port: {{ $p.port }}
      protocol: TCP
{{- end -}}
{{- end -}}

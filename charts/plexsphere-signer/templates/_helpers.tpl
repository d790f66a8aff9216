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

{{/*
The witness policy (SIGNER_WITNESS_POLICY_FILE): audit.witnessPolicy as
given, or rendered from audit.witnesses and audit.witnessQuorum in the
format of transparency-dev/formats' witness.ParsePolicy; empty without
witnesses.
*/}}
{{- define "signer.witnessPolicy" -}}
{{- $a := .Values.audit -}}
{{- if $a.witnessPolicy -}}
{{ trimSuffix "\n" $a.witnessPolicy }}
{{ else if $a.witnesses -}}
# Rendered by the plexsphere-signer chart from audit.witnesses and
# audit.witnessQuorum.
{{- $names := list }}
{{- range $a.witnesses }}
witness {{ .name }} {{ .verifierKey }} {{ .url }}
{{- $names = append $names .name }}
{{- end }}
group signer-quorum {{ $a.witnessQuorum }} {{ join " " $names }}
quorum signer-quorum
{{ end -}}
{{- end -}}

{{/* Non-empty when the witness policy names witnesses to push to. */}}
{{- define "signer.hasWitnesses" -}}
{{- if regexMatch "(?m)^[ \t]*witness[ \t]" (include "signer.witnessPolicy" .) }}true{{ end -}}
{{- end -}}

{{/*
Non-empty when the witness policy anchors the log: it asks for at least one
cosignature ("quorum none" asks for none).
*/}}
{{- define "signer.witnessAnchor" -}}
{{- $p := include "signer.witnessPolicy" . -}}
{{- if and $p (not (regexMatch "(?m)^[ \t]*quorum[ \t]+none[ \t]*(#.*)?$" $p)) }}true{{ end -}}
{{- end -}}

{{/*
The checkpoint file's volume: mounted at /var/lib/plexsphere-anchor, never
the store's volume. bbolt (one replica) appends to one file in it; postgres
replicas share the directory, each writing <hostname>.jsonl and reading
them all (SIGNER_CHECKPOINT_LOG names a directory).
*/}}
{{- define "signer.checkpointLog" -}}
{{- if eq .Values.store.type "postgres" }}/var/lib/plexsphere-anchor{{ else }}/var/lib/plexsphere-anchor/checkpoints.jsonl{{ end -}}
{{- end -}}

{{- define "signer.checkpointClaim" -}}
{{- .Values.audit.checkpointFile.existingClaim | default (printf "%s-checkpoints" (include "signer.name" .)) -}}
{{- end -}}

{{- define "signer.checkpointAccessModes" -}}
{{- $default := ternary "ReadWriteMany" "ReadWriteOnce" (eq .Values.store.type "postgres") -}}
{{- .Values.audit.checkpointFile.accessModes | default (list $default) | toJson -}}
{{- end -}}

{{/* A Go duration ("1m30s") in seconds, for thresholds and checks. */}}
{{- define "signer.seconds" -}}
{{- $unit := dict "ns" 1e-9 "us" 1e-6 "µs" 1e-6 "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 -}}
{{- $total := 0.0 -}}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h)" . -1 -}}
{{- $n := regexFind "^[0-9]+(\\.[0-9]+)?" . -}}
{{- $total = addf $total (mulf (float64 $n) (get $unit (trimPrefix $n .))) -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/* Render-time checks for combinations the schema cannot express. */}}
{{- define "signer.validate" -}}
{{- $a := .Values.audit -}}
{{- /* First: the chart's defaults refuse a signer without an anchor. */ -}}
{{- if and $a.anchorRequired (not (include "signer.witnessAnchor" .)) (not $a.checkpointFile.enabled) -}}
{{- fail "the audit log needs an anchor outside the store: set audit.witnesses (recommended; or audit.witnessPolicy) and/or audit.checkpointFile.enabled=true (docs/kubernetes.md#the-audit-logs-anchors); audit.anchorRequired=false only for development: a writer of the store could then roll the log back unseen" -}}
{{- end -}}
{{- if and $a.witnesses $a.witnessPolicy -}}
{{- fail "set audit.witnesses (with audit.witnessQuorum) or audit.witnessPolicy, not both" -}}
{{- end -}}
{{- $names := list -}}
{{- range $a.witnesses -}}
{{- if has .name $names -}}
{{- fail (printf "audit.witnesses: two witnesses named %s" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- if and $a.witnesses (not (kindIs "string" $a.witnessQuorum)) (gt (int $a.witnessQuorum) (len $a.witnesses)) -}}
{{- fail (printf "audit.witnessQuorum is %d, but audit.witnesses lists %d: a quorum larger than the witnesses can never be met" (int $a.witnessQuorum) (len $a.witnesses)) -}}
{{- end -}}
{{- if and $a.witnessPolicy (not (regexMatch "(?m)^[ \t]*quorum[ \t]" $a.witnessPolicy)) -}}
{{- fail "audit.witnessPolicy has no quorum line (\"quorum <group or witness>\", or \"quorum none\")" -}}
{{- end -}}
{{- if ge (float64 (include "signer.seconds" $a.witnessTimeout)) (float64 (include "signer.seconds" $a.maxUnanchored)) -}}
{{- fail (printf "audit.witnessTimeout (%s) must be shorter than audit.maxUnanchored (%s)" $a.witnessTimeout $a.maxUnanchored) -}}
{{- end -}}
{{- if and $a.checkpointFile.init (not $a.checkpointFile.enabled) -}}
{{- fail "audit.checkpointFile.init is set, but audit.checkpointFile.enabled is not: init starts the checkpoint file" -}}
{{- end -}}
{{- if and (gt (int $a.epoch) 1) (not $a.epochReason) -}}
{{- fail (printf "audit.epoch is %d: set audit.epochReason, why the new epoch begins (it is recorded in the log)" (int $a.epoch)) -}}
{{- end -}}
{{- $np := .Values.networkPolicy -}}
{{- if and $np.enabled (include "signer.hasWitnesses" .) (not (or $np.witnesses.cidrs $np.witnesses.podLabels)) -}}
{{- fail "networkPolicy.witnesses.cidrs or networkPolicy.witnesses.podLabels is required with audit witnesses: the NetworkPolicy denies every other egress, and witnesses the signer cannot reach leave its log unanchored (it then refuses every RPC)" -}}
{{- end -}}
{{- $names = list -}}
{{- range .Values.extraEnv -}}
{{- if has .name $names -}}
{{- fail (printf "extraEnv: %s is set twice" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- end -}}
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
{{- if eq $pg.migration.pruneRole $pg.migration.runtimeRole -}}
{{- fail "store.postgres.migration.pruneRole must be another role than runtimeRole: the serving signer must not be able to delete audit entries" -}}
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
{{- range .Values.auditorAllowSpiffeIDs -}}
{{- if has . $.Values.allowSpiffeIDs -}}
{{- fail (printf "%s is on allowSpiffeIDs and auditorAllowSpiffeIDs: the core's identity must not read the audit log; use a separate auditor identity" .) -}}
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

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
{{- include "signer.checkExtraEnv" . -}}
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

{{/*
The variables extraEnv must not set, each with what to set instead: every
variable the chart sets in any configuration (a second value would
silently fight the chart's: for the allow-lists, the last one wins), the
secrets' by-value forms (they would show in the pod spec) and the
maintenance runs, which never belong in a serving pod.
charts/settings_test.go keeps it complete against internal/config and the
docs.
*/}}
{{- define "signer.reservedEnv" -}}
SIGNER_LISTEN: the chart's (service.port; the container listens on 8443)
SIGNER_OPS_LISTEN: ops.port
SIGNER_JWKS_LISTEN: jwks.enabled and jwks.port
SIGNER_JWKS_CERT_FILE: jwks.tlsSecret
SIGNER_JWKS_KEY_FILE: jwks.tlsSecret
SIGNER_JWKS_ISSUER_URL: jwks.issuerURL
SIGNER_JWKS_RATE: jwks.ratePerSource
SIGNER_ALLOW_SPIFFE_IDS: allowSpiffeIDs
SIGNER_ROTATION_ALLOW_SPIFFE_IDS: rotationAllowSpiffeIDs
SIGNER_AUDITOR_ALLOW_SPIFFE_IDS: auditorAllowSpiffeIDs
SIGNER_SCOPE_GRANTS: scopeGrants
SIGNER_SCOPE_SIGN_VARIANTS: scopeSignVariants
SIGNER_BOOTSTRAP_SCOPES: bootstrapScopes
SIGNER_AUTO_ROTATE: autoRotate
SIGNER_ROTATION_PREPUBLISH: rotation.prepublish
SIGNER_ROTATION_VERIFY_ONLY: rotation.verifyOnly
SIGNER_MAX_PAYLOAD_BYTES: maxPayloadBytes
SIGNER_MAX_CONNECTION_AGE: maxConnectionAge
SIGNER_MAX_CONNECTIONS: maxConnections
SIGNER_MAX_CONNECTIONS_PER_SOURCE: maxConnectionsPerSource
SIGNER_CONNECTION_TIMEOUT: connectionTimeout
SIGNER_KEY_CACHE_TTL: keyCacheTTL
GOMEMLIMIT: goMemLimit
SIGNER_LOG_LEVEL: logLevel
SIGNER_SHUTDOWN_TIMEOUT: shutdown.timeoutSeconds
SIGNER_WORKLOAD_API_ADDR: identity.mode (spiffe-csi or hostpath) and its socket
SIGNER_SVID_CERT_FILE: identity.mode (files or cert-manager)
SIGNER_SVID_KEY_FILE: identity.mode (files or cert-manager)
SIGNER_TRUST_BUNDLE_FILE: identity.mode (files or cert-manager)
SIGNER_STORE: store.type
SIGNER_POSTGRES_DSN_FILE: store.postgres.dsnSecret
SIGNER_POSTGRES_MAX_CONNS: store.postgres.maxConns
SIGNER_POSTGRES_MIGRATE: store.postgres.migration.mode
SIGNER_BBOLT_PATH: store.type=bbolt (the file is on the StatefulSet's claim)
SIGNER_PROVIDER: provider.type
SIGNER_PKCS11_MODULE: provider.pkcs11.module
SIGNER_PKCS11_TOKEN_LABEL: provider.pkcs11.tokenLabel
SIGNER_PKCS11_SESSIONS: provider.pkcs11.sessions
SIGNER_PKCS11_PIN_FILE: provider.pkcs11.pinSecret
SIGNER_LOCAL_KEK_FILE: provider.local.kekSecret
SIGNER_AUDIT_ANCHOR_REQUIRED: audit.anchorRequired
SIGNER_AUDIT_MAX_UNANCHORED: audit.maxUnanchored
SIGNER_AUDIT_EPOCH: audit.epoch
SIGNER_AUDIT_EPOCH_REASON: audit.epochReason
SIGNER_AUDIT_ORIGIN: audit.origin
SIGNER_CHECKPOINT_VERIFIER_KEY: audit.checkpointVerifierKey
SIGNER_WITNESS_POLICY_FILE: audit.witnesses or audit.witnessPolicy
SIGNER_WITNESS_TIMEOUT: audit.witnessTimeout
SIGNER_CHECKPOINT_LOG: audit.checkpointFile.enabled
SIGNER_CHECKPOINT_LOG_INIT: audit.checkpointFile.init
SIGNER_POSTGRES_DSN: store.postgres.dsnSecret (a secret by value would show in the pod spec)
SIGNER_LOCAL_KEK: provider.local.kekSecret (a secret by value would show in the pod spec)
SIGNER_PKCS11_PIN: provider.pkcs11.pinSecret (a secret by value would show in the pod spec)
SIGNER_POSTGRES_OWNER_DSN: store.postgres.migration.ownerDsnSecret (the migration Job's; never in a serving pod)
SIGNER_POSTGRES_OWNER_DSN_FILE: store.postgres.migration.ownerDsnSecret (the migration Job's; never in a serving pod)
SIGNER_POSTGRES_RUNTIME_ROLE: store.postgres.migration.runtimeRole (the migration Job's)
SIGNER_POSTGRES_PRUNE_ROLE: store.postgres.migration.pruneRole (the migration Job's)
SIGNER_MIGRATE_ONLY: store.postgres.migration.mode=job (a serving pod never migrates only)
SIGNER_PRUNE_AUDIT_UPTO: a prune Job of its own (docs/audit.md, Retention; never in a serving pod)
SIGNER_PRUNE_AUDIT_EXPORT: a prune Job of its own (docs/audit.md, Retention; never in a serving pod)
SIGNER_POSTGRES_PRUNE_DSN: a prune Job of its own (docs/audit.md, Retention; never in a serving pod)
SIGNER_POSTGRES_PRUNE_DSN_FILE: a prune Job of its own (docs/audit.md, Retention; never in a serving pod)
{{- end -}}

{{/*
The signer's settings without a value of their own, which extraEnv may set.
Another SIGNER_* name is no setting (a typo, or one of a newer signer): the
signer would refuse to start on it, so the render refuses it first.
*/}}
{{- define "signer.extraEnvSettings" -}}
{{- list "SIGNER_IDENTITY_RELOAD" "SIGNER_AUDIT_MAX_BATCH" "SIGNER_AUDIT_CHECKPOINT_INTERVAL" "SIGNER_CONNECTION_RATE" "SIGNER_MAX_CONCURRENT_STREAMS" "SIGNER_DENIAL_RATE" "SIGNER_DENIALS_PER_CONNECTION" "SIGNER_MAX_PENDING_DENIALS" "SIGNER_DENIAL_MAX_WAIT" "SIGNER_DENIED_CONNECTION_RATE" | toJson -}}
{{- end -}}

{{/*
extraEnv never overrides the chart: a reserved name, an unknown SIGNER_*
name or a name given twice fails the render, naming the value to use.
*/}}
{{- define "signer.checkExtraEnv" -}}
{{- $reserved := include "signer.reservedEnv" . | fromYaml -}}
{{- $settings := include "signer.extraEnvSettings" . | fromJsonArray -}}
{{- $names := list -}}
{{- range $i, $e := .Values.extraEnv -}}
{{- if hasKey $reserved $e.name -}}
{{- fail (printf "extraEnv[%d]: %s is the chart's to set: use %s instead (in extraEnv it would silently fight the chart's value)" $i $e.name (get $reserved $e.name)) -}}
{{- end -}}
{{- if and (hasPrefix "SIGNER_" $e.name) (not (has $e.name $settings)) -}}
{{- fail (printf "extraEnv[%d]: %s is no setting of the signer, which would refuse to start on it; extraEnv may set %s (the others have values of their own, docs/kubernetes.md)" $i $e.name (join ", " $settings)) -}}
{{- end -}}
{{- if has $e.name $names -}}
{{- fail (printf "extraEnv[%d]: %s is set twice" $i $e.name) -}}
{{- end -}}
{{- $names = append $names $e.name -}}
{{- end -}}
{{- end -}}

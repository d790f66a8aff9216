{{/*
The signer pod, shared by the Deployment (postgres store: replicas share the
database) and the StatefulSet (bbolt store: one replica and its file on a
PersistentVolumeClaim).
*/}}

{{/* Where the SVID comes from, per identity mode. */}}
{{- define "signer.identityEnv" -}}
{{- $id := .Values.identity -}}
{{- if eq $id.mode "spiffe-csi" }}
- name: SIGNER_WORKLOAD_API_ADDR
  value: "unix:///spiffe-workload-api/{{ $id.spiffeCSI.socket }}"
{{- else if eq $id.mode "hostpath" }}
- name: SIGNER_WORKLOAD_API_ADDR
  value: "unix:///spiffe-workload-api/{{ $id.hostPath.socket }}"
{{- else }}
- name: SIGNER_SVID_CERT_FILE
  value: /var/run/secrets/spiffe.io/{{ if eq $id.mode "files" }}{{ $id.files.certKey }}{{ else }}tls.crt{{ end }}
- name: SIGNER_SVID_KEY_FILE
  value: /var/run/secrets/spiffe.io/{{ if eq $id.mode "files" }}{{ $id.files.keyKey }}{{ else }}tls.key{{ end }}
- name: SIGNER_TRUST_BUNDLE_FILE
  value: /var/run/secrets/spiffe.io/{{ if eq $id.mode "files" }}{{ $id.files.bundleKey }}{{ else }}ca.crt{{ end }}
{{- end }}
{{- end -}}

{{- define "signer.identityVolume" -}}
{{- $id := .Values.identity -}}
- name: spiffe-identity
{{- if eq $id.mode "spiffe-csi" }}
  csi:
    driver: {{ $id.spiffeCSI.driver }}
    readOnly: true
{{- else if eq $id.mode "cert-manager" }}
  csi:
    driver: {{ $id.certManager.driver }}
    readOnly: true
    volumeAttributes:
      spiffe.csi.cert-manager.io/fs-group: "65532"
{{- else if eq $id.mode "hostpath" }}
  # The SPIRE agent's socket directory on the node (the SPIRE quick-start
  # way, for clusters without the SPIFFE CSI driver).
  hostPath:
    path: {{ $id.hostPath.path }}
    type: Directory
{{- else }}
  secret:
    secretName: {{ $id.files.secretName }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/*
The audit log's settings and anchors: the witness policy from its
ConfigMap, the checkpoint file on its own volume.
*/}}
{{- define "signer.auditEnv" -}}
{{- $a := .Values.audit -}}
- name: SIGNER_AUDIT_ANCHOR_REQUIRED
  value: {{ $a.anchorRequired | quote }}
- name: SIGNER_AUDIT_MAX_UNANCHORED
  value: {{ $a.maxUnanchored | quote }}
- name: SIGNER_WITNESS_TIMEOUT
  value: {{ $a.witnessTimeout | quote }}
{{- if include "signer.witnessPolicy" . }}
- name: SIGNER_WITNESS_POLICY_FILE
  value: /etc/plexsphere/witnesses/policy
{{- end }}
{{- if $a.checkpointFile.enabled }}
- name: SIGNER_CHECKPOINT_LOG
  value: {{ include "signer.checkpointLog" . }}
- name: SIGNER_CHECKPOINT_LOG_INIT
  value: {{ $a.checkpointFile.init | quote }}
{{- end }}
{{- with $a.origin }}
- name: SIGNER_AUDIT_ORIGIN
  value: {{ . | quote }}
{{- end }}
{{- with $a.checkpointVerifierKey }}
- name: SIGNER_CHECKPOINT_VERIFIER_KEY
  value: {{ . | quote }}
{{- end }}
- name: SIGNER_AUDIT_EPOCH
  value: {{ int $a.epoch | quote }}
{{- with $a.epochReason }}
- name: SIGNER_AUDIT_EPOCH_REASON
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
The pod template's annotations: podAnnotations, and the witness policy's
checksum, so that a changed policy rolls the pods (the signer reads it at
start-up only).
*/}}
{{- define "signer.podAnnotations" -}}
{{- $ann := deepCopy (.Values.podAnnotations | default dict) -}}
{{- with include "signer.witnessPolicy" . -}}
{{- $_ := set $ann "checksum/witness-policy" (sha256sum .) -}}
{{- end -}}
{{- if $ann }}{{ toYaml $ann }}{{ end -}}
{{- end -}}

{{- define "signer.podSpec" -}}
{{- $pg := eq .Values.store.type "postgres" -}}
{{- $witnesses := include "signer.witnessPolicy" . -}}
{{- $anchor := .Values.audit.checkpointFile -}}
{{- $pkcs11 := eq .Values.provider.type "pkcs11" -}}
{{- $fileID := or (eq .Values.identity.mode "files") (eq .Values.identity.mode "cert-manager") -}}
serviceAccountName: {{ include "signer.name" . }}
automountServiceAccountToken: false
terminationGracePeriodSeconds: {{ add .Values.shutdown.drainSeconds .Values.shutdown.timeoutSeconds 10 }}
enableServiceLinks: false
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  seccompProfile:
    type: RuntimeDefault
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "signer.selector" . | nindent 8 }}
containers:
  - name: signer
    image: "{{ .Values.image.repository }}{{ if $pkcs11 }}-pkcs11{{ end }}:{{ .Values.image.tag }}"
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      runAsNonRoot: true
      capabilities:
        drop: ["ALL"]
    ports:
      - name: grpc
        containerPort: 8443
      - name: ops
        containerPort: {{ .Values.ops.port }}
      {{- if .Values.jwks.enabled }}
      - name: jwks
        containerPort: {{ .Values.jwks.port }}
      {{- end }}
    env:
      - name: SIGNER_LISTEN
        value: ":8443"
      - name: SIGNER_OPS_LISTEN
        value: ":{{ .Values.ops.port }}"
      {{- if .Values.jwks.enabled }}
      - name: SIGNER_JWKS_LISTEN
        value: ":{{ .Values.jwks.port }}"
      - name: SIGNER_JWKS_CERT_FILE
        value: /var/run/secrets/plexsphere/jwks/{{ .Values.jwks.tlsSecret.certKey }}
      - name: SIGNER_JWKS_KEY_FILE
        value: /var/run/secrets/plexsphere/jwks/{{ .Values.jwks.tlsSecret.keyKey }}
      - name: SIGNER_JWKS_ISSUER_URL
        value: {{ .Values.jwks.issuerURL | quote }}
      - name: SIGNER_JWKS_RATE
        value: {{ .Values.jwks.ratePerSource | quote }}
      {{- end }}
      - name: SIGNER_ALLOW_SPIFFE_IDS
        value: {{ join "," .Values.allowSpiffeIDs | quote }}
      - name: SIGNER_ROTATION_ALLOW_SPIFFE_IDS
        value: {{ join "," .Values.rotationAllowSpiffeIDs | quote }}
      - name: SIGNER_AUDITOR_ALLOW_SPIFFE_IDS
        value: {{ join "," .Values.auditorAllowSpiffeIDs | quote }}
      - name: SIGNER_SCOPE_GRANTS
        value: {{ join "," .Values.scopeGrants | quote }}
      - name: SIGNER_SCOPE_SIGN_VARIANTS
        value: {{ join "," .Values.scopeSignVariants | quote }}
      - name: SIGNER_BOOTSTRAP_SCOPES
        value: {{ join "," .Values.bootstrapScopes | quote }}
      - name: SIGNER_AUTO_ROTATE
        value: {{ join "," .Values.autoRotate | quote }}
      - name: SIGNER_ROTATION_PREPUBLISH
        value: {{ .Values.rotation.prepublish | quote }}
      - name: SIGNER_ROTATION_VERIFY_ONLY
        value: {{ .Values.rotation.verifyOnly | quote }}
      - name: SIGNER_MAX_PAYLOAD_BYTES
        value: {{ .Values.maxPayloadBytes | quote }}
      - name: SIGNER_MAX_CONNECTION_AGE
        value: {{ .Values.maxConnectionAge | quote }}
      - name: SIGNER_MAX_CONNECTIONS
        value: {{ int .Values.maxConnections | quote }}
      - name: SIGNER_MAX_CONNECTIONS_PER_SOURCE
        value: {{ int .Values.maxConnectionsPerSource | quote }}
      - name: SIGNER_CONNECTION_TIMEOUT
        value: {{ .Values.connectionTimeout | quote }}
      - name: SIGNER_KEY_CACHE_TTL
        value: {{ .Values.keyCacheTTL | quote }}
      {{- with .Values.goMemLimit }}
      - name: GOMEMLIMIT
        value: {{ . | quote }}
      {{- end }}
      - name: SIGNER_LOG_LEVEL
        value: {{ .Values.logLevel | quote }}
      - name: SIGNER_SHUTDOWN_TIMEOUT
        value: "{{ .Values.shutdown.timeoutSeconds }}s"
      {{- include "signer.identityEnv" . | nindent 6 }}
      - name: SIGNER_STORE
        value: {{ .Values.store.type | quote }}
      {{- if $pg }}
      - name: SIGNER_POSTGRES_DSN_FILE
        value: /var/run/secrets/plexsphere/postgres/{{ .Values.store.postgres.dsnSecret.key }}
      - name: SIGNER_POSTGRES_MAX_CONNS
        value: {{ .Values.store.postgres.maxConns | quote }}
      # The runtime role never owns the schema: the migration Job (an owner
      # role of its own) applies it; selfMigrate is for a throwaway database.
      - name: SIGNER_POSTGRES_MIGRATE
        value: {{ eq .Values.store.postgres.migration.mode "self" | quote }}
      {{- else }}
      - name: SIGNER_BBOLT_PATH
        value: /var/lib/plexsphere/signer.db
      {{- end }}
      - name: SIGNER_PROVIDER
        value: {{ .Values.provider.type | quote }}
      {{- if $pkcs11 }}
      - name: SIGNER_PKCS11_MODULE
        value: {{ .Values.provider.pkcs11.module | quote }}
      - name: SIGNER_PKCS11_TOKEN_LABEL
        value: {{ .Values.provider.pkcs11.tokenLabel | quote }}
      - name: SIGNER_PKCS11_SESSIONS
        value: {{ .Values.provider.pkcs11.sessions | quote }}
      - name: SIGNER_PKCS11_PIN_FILE
        value: /var/run/secrets/plexsphere/pkcs11/{{ .Values.provider.pkcs11.pinSecret.key }}
      {{- else }}
      - name: SIGNER_LOCAL_KEK_FILE
        value: /var/run/secrets/plexsphere/kek/{{ .Values.provider.local.kekSecret.key }}
      {{- end }}
      {{- include "signer.auditEnv" . | nindent 6 }}
      {{- /* Last, and never a variable set above (signer.checkExtraEnv refuses those). */}}
      {{- range .Values.extraEnv }}
      - name: {{ .name }}
        {{- if hasKey . "valueFrom" }}
        valueFrom:
          {{- toYaml .valueFrom | nindent 10 }}
        {{- else }}
        value: {{ .value | quote }}
        {{- end }}
      {{- end }}
    {{- if gt (int .Values.shutdown.drainSeconds) 0 }}
    # A stopping replica keeps serving while the sidecars learn that it is
    # going: it leaves the headless Service's DNS answer at once, but
    # CoreDNS may serve the old answer for its cache TTL (30 s in kubeadm's
    # Corefile) and a gRPC dns resolver re-resolves only when a connection
    # drops. Only then does it stop (GOAWAY, in-flight calls drained).
    lifecycle:
      preStop:
        sleep:
          seconds: {{ .Values.shutdown.drainSeconds }}
    {{- end }}
    # Started once the process serves its ops port (liveness), not once it is
    # ready: a signer that refuses to serve (an audit log broken or not yet
    # anchored, say on a first install whose witnesses do not know the log
    # yet) stays up, not ready, naming why, instead of restarting in a loop.
    startupProbe:
      httpGet:
        path: /healthz
        port: ops
      periodSeconds: 2
      failureThreshold: 60
    readinessProbe:
      grpc:
        port: {{ .Values.ops.port }}
      periodSeconds: 5
    livenessProbe:
      httpGet:
        path: /healthz
        port: ops
      periodSeconds: 10
    resources:
      {{- toYaml .Values.resources | nindent 6 }}
    volumeMounts:
      - name: spiffe-identity
        mountPath: {{ if $fileID }}/var/run/secrets/spiffe.io{{ else }}/spiffe-workload-api{{ end }}
        readOnly: true
      {{- if $pg }}
      - name: postgres
        mountPath: /var/run/secrets/plexsphere/postgres
        readOnly: true
      {{- else }}
      - name: data
        mountPath: /var/lib/plexsphere
      {{- end }}
      {{- if $anchor.enabled }}
      - name: checkpoints
        mountPath: /var/lib/plexsphere-anchor
      {{- end }}
      {{- if $witnesses }}
      - name: witness-policy
        mountPath: /etc/plexsphere/witnesses
        readOnly: true
      {{- end }}
      {{- if .Values.jwks.enabled }}
      - name: jwks-tls
        mountPath: /var/run/secrets/plexsphere/jwks
        readOnly: true
      {{- end }}
      {{- if $pkcs11 }}
      - name: pkcs11-pin
        mountPath: /var/run/secrets/plexsphere/pkcs11
        readOnly: true
      {{- else }}
      - name: kek
        mountPath: /var/run/secrets/plexsphere/kek
        readOnly: true
      {{- end }}
volumes:
  {{- include "signer.identityVolume" . | nindent 2 }}
  {{- if $pg }}
  - name: postgres
    secret:
      secretName: {{ .Values.store.postgres.dsnSecret.name }}
      defaultMode: 0400
  {{- end }}
  {{- /* bbolt without existingClaim: the StatefulSet's own claim template. */}}
  {{- if and $anchor.enabled (or $pg $anchor.existingClaim) }}
  - name: checkpoints
    persistentVolumeClaim:
      claimName: {{ include "signer.checkpointClaim" . }}
  {{- end }}
  {{- if $witnesses }}
  - name: witness-policy
    configMap:
      name: {{ include "signer.name" . }}-witness-policy
      defaultMode: 0444
  {{- end }}
  {{- if .Values.jwks.enabled }}
  - name: jwks-tls
    secret:
      secretName: {{ .Values.jwks.tlsSecret.name }}
      defaultMode: 0440
  {{- end }}
  {{- if $pkcs11 }}
  - name: pkcs11-pin
    secret:
      secretName: {{ .Values.provider.pkcs11.pinSecret.name }}
      defaultMode: 0400
  {{- else }}
  - name: kek
    secret:
      secretName: {{ .Values.provider.local.kekSecret.name }}
      defaultMode: 0400
  {{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
plexsphere-sidecar: named templates a core chart includes. Each takes a dict
with "sidecar" (the values block shown in values.yaml). The core container
mounts only the socket directory (plexsphere-sidecar.coreVolumeMounts) and
never the identity: plexsphere-sidecar.checkCore fails the render if it
could reach it any way the chart can see.
*/}}

{{- define "plexsphere-sidecar.require" -}}
{{- $s := .sidecar -}}
{{- if not $s.signerSpiffeID -}}
{{- fail "sidecar.signerSpiffeID is required: the sidecar must know which SPIFFE ID the signer presents" -}}
{{- end -}}
{{- if not $s.allowUIDs -}}
{{- fail "sidecar.allowUIDs is empty: name the core container's uid, or any process in the pod could sign" -}}
{{- end -}}
{{- range $s.allowUIDs -}}
{{- if eq (int .) (int $s.runAsUser) -}}
{{- fail (printf "sidecar.runAsUser %d is on sidecar.allowUIDs: the core and the sidecar must run as different uids" (int $s.runAsUser)) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $s "relay" -}}
{{- fail "sidecar.relay is gone: the sidecar has one forwarding path, as light as the old relay (docs/operations.md); remove the value" -}}
{{- end -}}
{{- if and (eq $s.identity.mode "files") (not $s.identity.files.secretName) -}}
{{- fail "sidecar.identity.files.secretName is required with identity.mode=files" -}}
{{- end -}}
{{- if not (has ($s.logLevel | default "info") (list "debug" "info" "warn" "error")) -}}
{{- fail (printf "sidecar.logLevel %q: debug, info, warn or error" (toString $s.logLevel)) -}}
{{- end -}}
{{- if not (regexMatch "^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$" (toString ($s.shutdownTimeout | default "10s"))) -}}
{{- fail (printf "sidecar.shutdownTimeout %q is no duration (e.g. 10s, 1m30s)" (toString $s.shutdownTimeout)) -}}
{{- end -}}
{{- if and (hasKey $s "maxMessageBytes") (or (not (regexMatch "^[0-9]+$" (toString $s.maxMessageBytes))) (lt (int $s.maxMessageBytes) 1)) -}}
{{- fail (printf "sidecar.maxMessageBytes %v: a number of bytes, at least 1" $s.maxMessageBytes) -}}
{{- end -}}
{{- include "plexsphere-sidecar.checkExtraEnv" . -}}
{{- end -}}

{{/*
The variables sidecar.extraEnv must not set, each with the value to use
instead: every variable the sidecar's spec sets in any configuration. A
second value would silently fight the chart's (the socket's mode, the
uids allowed on it, the signer's SPIFFE ID). charts/settings_test.go keeps
it complete against internal/config and the docs.
*/}}
{{- define "plexsphere-sidecar.reservedEnv" -}}
SIDECAR_LISTEN: sidecar.socketDir (the core dials unix://<socketDir>/signer.sock)
SIDECAR_SOCKET_MODE: the chart's (0660, the pod's group; sidecar.runAsGroup)
SIDECAR_ALLOW_UIDS: sidecar.allowUIDs
SIDECAR_OPS_LISTEN: sidecar.opsPort
SIDECAR_UPSTREAM: sidecar.upstream
SIDECAR_SIGNER_SPIFFE_ID: sidecar.signerSpiffeID
SIDECAR_MAX_CONNECTIONS: sidecar.maxConnections
SIDECAR_MAX_CONCURRENT_STREAMS: sidecar.maxConcurrentStreams
SIDECAR_MAX_MESSAGE_BYTES: sidecar.maxMessageBytes
SIDECAR_SHUTDOWN_TIMEOUT: sidecar.shutdownTimeout
SIDECAR_LOG_LEVEL: sidecar.logLevel
SIDECAR_WORKLOAD_API_ADDR: sidecar.identity.mode (spiffe-csi or hostpath) and its socket
SIDECAR_SVID_CERT_FILE: sidecar.identity.mode (files or cert-manager)
SIDECAR_SVID_KEY_FILE: sidecar.identity.mode (files or cert-manager)
SIDECAR_TRUST_BUNDLE_FILE: sidecar.identity.mode (files or cert-manager)
{{- end -}}

{{/* The sidecar's settings without a value of their own. */}}
{{- define "plexsphere-sidecar.extraEnvSettings" -}}
{{- list "SIDECAR_IDENTITY_RELOAD" | toJson -}}
{{- end -}}

{{/*
sidecar.extraEnv ([{name, value}] or [{name, valueFrom}]) never overrides
the chart: a reserved name, an unknown SIDECAR_* name, a name given twice,
or an entry without exactly one of value and valueFrom fails the render.
*/}}
{{- define "plexsphere-sidecar.checkExtraEnv" -}}
{{- $reserved := include "plexsphere-sidecar.reservedEnv" . | fromYaml -}}
{{- $settings := include "plexsphere-sidecar.extraEnvSettings" . | fromJsonArray -}}
{{- $names := list -}}
{{- range $i, $e := .sidecar.extraEnv | default list -}}
{{- $name := toString ($e.name | default "") -}}
{{- if not (regexMatch "^[A-Za-z_][A-Za-z0-9_]*$" $name) -}}
{{- fail (printf "sidecar.extraEnv[%d]: name %q is no variable name" $i $name) -}}
{{- end -}}
{{- if eq (hasKey $e "value") (hasKey $e "valueFrom") -}}
{{- fail (printf "sidecar.extraEnv[%d] (%s): set value or valueFrom, one of them" $i $name) -}}
{{- end -}}
{{- range $k, $_ := $e -}}
{{- if not (has $k (list "name" "value" "valueFrom")) -}}
{{- fail (printf "sidecar.extraEnv[%d] (%s): unknown field %q (name, value, valueFrom)" $i $name $k) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $reserved $name -}}
{{- fail (printf "sidecar.extraEnv[%d]: %s is the chart's to set: use %s instead (in extraEnv it would silently fight the chart's value)" $i $name (get $reserved $name)) -}}
{{- end -}}
{{- if and (hasPrefix "SIDECAR_" $name) (not (has $name $settings)) -}}
{{- fail (printf "sidecar.extraEnv[%d]: %s is no setting of the sidecar, which would refuse to start on it; extraEnv may set %s (the others have values of their own)" $i $name (join ", " $settings)) -}}
{{- end -}}
{{- if has $name $names -}}
{{- fail (printf "sidecar.extraEnv[%d]: %s is set twice" $i $name) -}}
{{- end -}}
{{- $names = append $names $name -}}
{{- end -}}
{{- end -}}

{{/* The label the signer's NetworkPolicy admits. */}}
{{- define "plexsphere-sidecar.podLabels" -}}
{{ .sidecar.injectionLabel.key }}: {{ .sidecar.injectionLabel.value | quote }}
{{- end -}}

{{/* The socket the core dials. */}}
{{- define "plexsphere-sidecar.target" -}}
unix://{{ .sidecar.socketDir }}/signer.sock
{{- end -}}

{{/* Where the identity is mounted in the sidecar. */}}
{{- define "plexsphere-sidecar.identityMountPath" -}}
{{- if has .sidecar.identity.mode (list "spiffe-csi" "hostpath") -}}
/spiffe-workload-api
{{- else -}}
/var/run/secrets/spiffe.io
{{- end -}}
{{- end -}}

{{- define "plexsphere-sidecar.spec" -}}
{{- include "plexsphere-sidecar.require" . -}}
{{- $s := .sidecar -}}
{{- $id := $s.identity -}}
name: plexsphere-sidecar
image: "{{ $s.image.repository }}:{{ $s.image.tag }}"
imagePullPolicy: {{ $s.image.pullPolicy }}
# Its own uid (the core's is on SIDECAR_ALLOW_UIDS, the sidecar's never), the
# pod's group (the socket is 0660), and its own seccomp profile whatever the
# including chart sets for the pod.
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  runAsUser: {{ $s.runAsUser }}
  runAsGroup: {{ $s.runAsGroup }}
  capabilities:
    drop: ["ALL"]
  seccompProfile:
    type: RuntimeDefault
env:
  - name: SIDECAR_LISTEN
    value: "unix://{{ $s.socketDir }}/signer.sock"
  - name: SIDECAR_UPSTREAM
    value: {{ $s.upstream | quote }}
  - name: SIDECAR_SIGNER_SPIFFE_ID
    value: {{ $s.signerSpiffeID | quote }}
  - name: SIDECAR_ALLOW_UIDS
    value: {{ join "," $s.allowUIDs | quote }}
  - name: SIDECAR_OPS_LISTEN
    value: ":{{ $s.opsPort }}"
  - name: SIDECAR_MAX_CONNECTIONS
    value: {{ $s.maxConnections | default 128 | quote }}
  - name: SIDECAR_MAX_CONCURRENT_STREAMS
    value: {{ $s.maxConcurrentStreams | default 1024 | quote }}
  - name: SIDECAR_MAX_MESSAGE_BYTES
    value: {{ $s.maxMessageBytes | default 327680 | int | quote }}
  - name: SIDECAR_SHUTDOWN_TIMEOUT
    value: {{ $s.shutdownTimeout | default "10s" | quote }}
  - name: SIDECAR_LOG_LEVEL
    value: {{ $s.logLevel | default "info" | quote }}
  # The core shares the pod's group: 0660 lets it, and only the uids on
  # SIDECAR_ALLOW_UIDS get past SO_PEERCRED.
  - name: SIDECAR_SOCKET_MODE
    value: "0660"
  {{- if eq $id.mode "spiffe-csi" }}
  - name: SIDECAR_WORKLOAD_API_ADDR
    value: "unix:///spiffe-workload-api/{{ $id.spiffeCSI.socket }}"
  {{- else if eq $id.mode "hostpath" }}
  - name: SIDECAR_WORKLOAD_API_ADDR
    value: "unix:///spiffe-workload-api/{{ $id.hostPath.socket }}"
  {{- else }}
  - name: SIDECAR_SVID_CERT_FILE
    value: /var/run/secrets/spiffe.io/{{ if eq $id.mode "files" }}{{ $id.files.certKey }}{{ else }}tls.crt{{ end }}
  - name: SIDECAR_SVID_KEY_FILE
    value: /var/run/secrets/spiffe.io/{{ if eq $id.mode "files" }}{{ $id.files.keyKey }}{{ else }}tls.key{{ end }}
  - name: SIDECAR_TRUST_BUNDLE_FILE
    value: /var/run/secrets/spiffe.io/{{ if eq $id.mode "files" }}{{ $id.files.bundleKey }}{{ else }}ca.crt{{ end }}
  {{- end }}
  {{- /* Last, and never a variable set above (checkExtraEnv refuses those). */}}
  {{- range $s.extraEnv | default list }}
  - name: {{ .name }}
    {{- if hasKey . "valueFrom" }}
    valueFrom:
      {{- toYaml .valueFrom | nindent 6 }}
    {{- else }}
    value: {{ .value | quote }}
    {{- end }}
  {{- end }}
ports:
  - name: sidecar-ops
    containerPort: {{ $s.opsPort }}
# Passes only once the mTLS handshake with the signer works: the health
# service reports NOT_SERVING until then, so the core starts after it.
startupProbe:
  grpc:
    port: {{ $s.opsPort }}
    service: plexsphere.sidecar
  periodSeconds: 1
  failureThreshold: 120
readinessProbe:
  grpc:
    port: {{ $s.opsPort }}
    service: plexsphere.sidecar
  periodSeconds: 5
resources:
  {{- toYaml $s.resources | nindent 2 }}
volumeMounts:
  - name: plexsphere-socket
    mountPath: {{ $s.socketDir }}
  - name: plexsphere-identity
    mountPath: {{ include "plexsphere-sidecar.identityMountPath" . }}
    readOnly: true
{{- end -}}

{{/* Native sidecar: an init container that keeps running. */}}
{{- define "plexsphere-sidecar.initContainer" -}}
{{- if eq .sidecar.mode "native" -}}
- {{ include "plexsphere-sidecar.spec" . | nindent 2 | trim }}
  restartPolicy: Always
{{- end -}}
{{- end -}}

{{/* Classic fallback: an ordinary container beside the core. */}}
{{- define "plexsphere-sidecar.container" -}}
{{- if eq .sidecar.mode "classic" -}}
- {{ include "plexsphere-sidecar.spec" . | nindent 2 | trim }}
{{- end -}}
{{- end -}}

{{- define "plexsphere-sidecar.volumes" -}}
{{- $id := .sidecar.identity -}}
- name: plexsphere-socket
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
- name: plexsphere-identity
  {{- if eq $id.mode "spiffe-csi" }}
  csi:
    driver: {{ $id.spiffeCSI.driver }}
    readOnly: true
  {{- else if eq $id.mode "cert-manager" }}
  csi:
    driver: {{ $id.certManager.driver }}
    readOnly: true
    volumeAttributes:
      spiffe.csi.cert-manager.io/fs-group: {{ .sidecar.runAsGroup | quote }}
  {{- else if eq $id.mode "hostpath" }}
  # The SPIRE agent's socket directory on the node (SPIRE's quick-start way,
  # for clusters without the SPIFFE CSI driver).
  hostPath:
    path: {{ $id.hostPath.path }}
    type: Directory
  {{- else }}
  secret:
    secretName: {{ $id.files.secretName }}
    defaultMode: 0440
  {{- end }}
{{- end -}}

{{/* What the core container mounts: the socket directory, nothing else. */}}
{{- define "plexsphere-sidecar.coreVolumeMounts" -}}
- name: plexsphere-socket
  mountPath: {{ .sidecar.socketDir }}
{{- end -}}

{{/*
checkCore fails the render if a core container could reach the sidecar's
identity or credentials. Pass:
  "sidecar":    the sidecar values;
  "pod":        pod-level settings (shareProcessNamespace);
  "volumes":    the pod's other volumes (the chart's extra volumes);
  "volumesKey": the values key those volumes come from, for the messages
                (default "volumes");
  "containers": the core containers (name, volumeMounts, env).
Refused:
  - a volume named like one of the sidecar's (plexsphere-socket,
    plexsphere-identity): two volumes of one name are refused by the API
    server at best, and a merge patch on upgrade could keep either;
  - shareProcessNamespace: the core could read the sidecar's memory and
    files through /proc;
  - a core mount of plexsphere-identity, or of ANY volume whose source is the
    identity's (the CSI driver, the SVID Secret), whatever its name;
  - a core mount of ANY hostPath volume, whatever its path. Comparing paths
    cannot hold: /var/run is a link to /run, "//", "/./" and "x/../x" name
    the same directory, and the chart cannot know every host directory that
    reaches an identity: the SPIRE agent socket directory (hostpath mode),
    the one the SPIFFE CSI driver serves from (another daemon's setting),
    the kubelet's pod volumes (every pod's CSI mounts and Secrets, under a
    root directory each distribution moves), the container runtime's
    socket. A core that reaches the agent socket fetches the pod's SVID,
    which is the sidecar's identity. No documented use of the core needs a
    host directory; node-local data belongs in a persistentVolumeClaim on a
    local PersistentVolume, whose path the cluster's administrator chose;
  - Workload API and SVID overrides in the core's environment
    (SPIFFE_ENDPOINT_SOCKET, SIDECAR_*, SIGNER_*).
*/}}
{{- define "plexsphere-sidecar.checkCore" -}}
{{- $s := .sidecar -}}
{{- $id := $s.identity -}}
{{- if and .pod .pod.shareProcessNamespace -}}
{{- fail "shareProcessNamespace is refused in a pod with the plexsphere sidecar: the core could read the sidecar's SVID through /proc" -}}
{{- end -}}
{{- $drivers := list $id.spiffeCSI.driver $id.certManager.driver -}}
{{- $volumesKey := .volumesKey | default "volumes" -}}
{{- $identityVolumes := list "plexsphere-identity" -}}
{{- $hostPaths := dict -}}
{{- range $i, $v := .volumes -}}
{{- if has (toString $v.name) (list "plexsphere-socket" "plexsphere-identity") -}}
{{- fail (printf "%s[%d] is named %q, a name of the sidecar's volumes; rename it" $volumesKey $i (toString $v.name)) -}}
{{- end -}}
{{- $isIdentity := false -}}
{{- if and $v.csi (has $v.csi.driver $drivers) -}}{{- $isIdentity = true -}}{{- end -}}
{{- /* hasKey: an empty hostPath ({}) is falsy but still a hostPath. */ -}}
{{- if hasKey $v "hostPath" -}}
{{- $path := "" -}}{{- if $v.hostPath -}}{{- $path = $v.hostPath.path | default "" -}}{{- end -}}
{{- $_ := set $hostPaths (toString $v.name) (printf "%s[%d] is hostPath %q" $volumesKey $i $path) -}}
{{- end -}}
{{- if and $v.secret $id.files.secretName (eq $v.secret.secretName $id.files.secretName) -}}{{- $isIdentity = true -}}{{- end -}}
{{- if $v.projected -}}
{{- range $v.projected.sources -}}
{{- if and .secret $id.files.secretName (eq .secret.name $id.files.secretName) -}}{{- $isIdentity = true -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- if $isIdentity -}}{{- $identityVolumes = append $identityVolumes $v.name -}}{{- end -}}
{{- end -}}
{{- range .containers -}}
{{- $c := . -}}
{{- range .volumeMounts -}}
{{- if has .name $identityVolumes -}}
{{- fail (printf "container %s must not mount %s: it is the sidecar's identity (%s); the core holds no credentials" $c.name .name $id.mode) -}}
{{- end -}}
{{- if hasKey $hostPaths (toString .name) -}}
{{- fail (printf "container %s must not mount %s: %s, and a core container mounts no host directory (one may hold the SPIRE agent socket or the kubelet's pod volumes, and with them the sidecar's SVID); use an emptyDir, configMap, secret or persistentVolumeClaim instead" $c.name .name (get $hostPaths (toString .name))) -}}
{{- end -}}
{{- end -}}
{{- range .env -}}
{{- if or (eq .name "SPIFFE_ENDPOINT_SOCKET") (hasPrefix "SIDECAR_" .name) (hasPrefix "SIGNER_" .name) -}}
{{- fail (printf "container %s must not receive %s: the core holds no credentials and reaches no Workload API" $c.name .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
networkPolicy: an optional NetworkPolicy for the core pods that admits the
sidecar's ops port (metrics, health) only from the scrape namespaces, and
leaves every other port of the pod as open as it was. Pass "sidecar",
"name" (the policy's name) and "selector" (the core pods' labels).
*/}}
{{- define "plexsphere-sidecar.networkPolicy" -}}
{{- $s := .sidecar -}}
{{- $np := $s.networkPolicy -}}
{{- if $np.enabled -}}
{{- $ops := int $s.opsPort -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ .name }}-sidecar-ops
spec:
  podSelector:
    matchLabels:
      {{- toYaml .selector | nindent 6 }}
  policyTypes: ["Ingress"]
  ingress:
    # Every port but the sidecar's ops port, from anywhere, as before.
    - ports:
        {{- if gt $ops 1 }}
        - protocol: TCP
          port: 1
          endPort: {{ sub $ops 1 }}
        {{- end }}
        {{- if lt $ops 65535 }}
        - protocol: TCP
          port: {{ add $ops 1 }}
          endPort: 65535
        {{- end }}
        - protocol: UDP
          port: 1
          endPort: 65535
        - protocol: SCTP
          port: 1
          endPort: 65535
    {{- if $np.scrapeNamespaces }}
    # The ops port, from the scrapers' namespaces only.
    - from:
        - namespaceSelector:
            matchExpressions:
              - key: kubernetes.io/metadata.name
                operator: In
                values: {{ toJson $np.scrapeNamespaces }}
      ports:
        - protocol: TCP
          port: {{ $ops }}
    {{- end }}
{{- end -}}
{{- end -}}

{{/*
plexsphere-sidecar: named templates a core chart includes. Each takes a dict
with "sidecar" (the values block shown in values.yaml). The core container
mounts only the socket directory (plexsphere-sidecar.coreVolumeMounts) and
never the identity volume: plexsphere-sidecar.checkCore fails the render if
it would.
*/}}

{{- define "plexsphere-sidecar.require" -}}
{{- if not .sidecar.signerSpiffeID -}}
{{- fail "sidecar.signerSpiffeID is required: the sidecar must know which SPIFFE ID the signer presents" -}}
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

{{- define "plexsphere-sidecar.spec" -}}
{{- include "plexsphere-sidecar.require" . -}}
name: plexsphere-sidecar
image: "{{ .sidecar.image.repository }}:{{ .sidecar.image.tag }}"
imagePullPolicy: {{ .sidecar.image.pullPolicy }}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  runAsUser: 65532
  capabilities:
    drop: ["ALL"]
env:
  - name: SIDECAR_LISTEN
    value: "unix://{{ .sidecar.socketDir }}/signer.sock"
  - name: SIDECAR_UPSTREAM
    value: {{ .sidecar.upstream | quote }}
  - name: SIDECAR_SIGNER_SPIFFE_ID
    value: {{ .sidecar.signerSpiffeID | quote }}
  - name: SIDECAR_ALLOW_UIDS
    value: {{ join "," .sidecar.allowUIDs | quote }}
  - name: SIDECAR_OPS_LISTEN
    value: ":{{ .sidecar.opsPort }}"
  {{- if eq .sidecar.identity.mode "spiffe-csi" }}
  - name: SIDECAR_WORKLOAD_API_ADDR
    value: "unix:///spiffe-workload-api/{{ .sidecar.identity.spiffeCSI.socket }}"
  {{- else }}
  - name: SIDECAR_SVID_CERT_FILE
    value: /var/run/secrets/spiffe.io/tls.crt
  - name: SIDECAR_SVID_KEY_FILE
    value: /var/run/secrets/spiffe.io/tls.key
  - name: SIDECAR_TRUST_BUNDLE_FILE
    value: /var/run/secrets/spiffe.io/ca.crt
  {{- end }}
ports:
  - name: sidecar-ops
    containerPort: {{ .sidecar.opsPort }}
# Passes only once the mTLS handshake with the signer works: the health
# service reports NOT_SERVING until then, so the core starts after it.
startupProbe:
  grpc:
    port: {{ .sidecar.opsPort }}
    service: plexsphere.sidecar
  periodSeconds: 1
  failureThreshold: 120
readinessProbe:
  grpc:
    port: {{ .sidecar.opsPort }}
    service: plexsphere.sidecar
  periodSeconds: 5
resources:
  {{- toYaml .sidecar.resources | nindent 2 }}
volumeMounts:
  - name: plexsphere-socket
    mountPath: {{ .sidecar.socketDir }}
  - name: plexsphere-identity
    mountPath: {{ if eq .sidecar.identity.mode "spiffe-csi" }}/spiffe-workload-api{{ else }}/var/run/secrets/spiffe.io{{ end }}
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
- name: plexsphere-socket
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
- name: plexsphere-identity
  csi:
    {{- if eq .sidecar.identity.mode "spiffe-csi" }}
    driver: {{ .sidecar.identity.spiffeCSI.driver }}
    readOnly: true
    {{- else }}
    driver: {{ .sidecar.identity.certManager.driver }}
    readOnly: true
    volumeAttributes:
      spiffe.csi.cert-manager.io/fs-group: "65532"
    {{- end }}
{{- end -}}

{{/* What the core container mounts: the socket directory, nothing else. */}}
{{- define "plexsphere-sidecar.coreVolumeMounts" -}}
- name: plexsphere-socket
  mountPath: {{ .sidecar.socketDir }}
{{- end -}}

{{/*
checkCore fails the render if a core container would receive the identity
volume or the sidecar's credentials. Pass "containers": the core containers
as values (name, volumeMounts, env).
*/}}
{{- define "plexsphere-sidecar.checkCore" -}}
{{- range .containers -}}
{{- $c := . -}}
{{- range .volumeMounts -}}
{{- if eq .name "plexsphere-identity" -}}
{{- fail (printf "container %s must not mount the sidecar's identity volume (plexsphere-identity): the core holds no credentials" $c.name) -}}
{{- end -}}
{{- end -}}
{{- range .env -}}
{{- if hasPrefix "SIDECAR_SVID" .name -}}
{{- fail (printf "container %s must not receive %s: the core holds no credentials" $c.name .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

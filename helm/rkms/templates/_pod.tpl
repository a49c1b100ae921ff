{{/*
Pieces shared by the server Deployment and the preflight Job: volumes and
their mounts, so both see the same config, tokens and certificates.
*/}}
{{- define "rkms.volumes" -}}
- name: config
  configMap:
    name: {{ include "rkms.fullname" . }}
{{- if include "rkms.usesTokensSecret" . }}
- name: tokens
  secret:
    secretName: {{ include "rkms.tokensSecretName" . }}
    defaultMode: 0440
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "tls.secretName is required when tls.enabled is true" .Values.tls.secretName }}
    defaultMode: 0440
{{- if .Values.tls.clientCrl.secretName }}
- name: crl
  secret:
    secretName: {{ .Values.tls.clientCrl.secretName }}
    defaultMode: 0440
    items:
      - key: {{ .Values.tls.clientCrl.key | quote }}
        path: ca.crl
{{- end }}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 16Mi
{{- end -}}

{{- define "rkms.volumeMounts" -}}
- name: config
  mountPath: {{ include "rkms.configDir" . }}
  readOnly: true
{{- if include "rkms.usesTokensSecret" . }}
- name: tokens
  mountPath: {{ include "rkms.tokensDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ include "rkms.tlsDir" . }}
  readOnly: true
{{- if .Values.tls.clientCrl.secretName }}
- name: crl
  mountPath: {{ include "rkms.crlDir" . }}
  readOnly: true
{{- end }}
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/*
A probe from values. An httpGet without a port probes the metrics listener
when metrics.enabled: it has its own connection budget, so clients holding
server.max_connections on the API port cannot fail liveness and have the
kubelet restart every pod. The scheme follows the port: the API port speaks
only HTTPS under tls.enabled, the metrics listener only HTTP; a probe on
another port keeps the scheme given.
*/}}
{{- define "rkms.probe" -}}
{{- $root := .root -}}
{{- $probe := deepCopy .probe -}}
{{- with $probe.httpGet -}}
{{- if not .port -}}
{{- $_ := set . "port" (ternary "metrics" "http" $root.Values.metrics.enabled) -}}
{{- end -}}
{{- $port := toString .port -}}
{{- $api := or (eq $port "http") (eq $port (toString $root.Values.containerPorts.http)) -}}
{{- $metrics := or (eq $port "metrics") (eq $port (toString $root.Values.containerPorts.metrics)) -}}
{{- if and $api $root.Values.tls.enabled -}}
{{- $_ := set . "scheme" "HTTPS" -}}
{{- else if or $api $metrics -}}
{{- $_ := set . "scheme" "HTTP" -}}
{{- end -}}
{{- if and (not $root.Values.metrics.enabled) $metrics -}}
{{- fail (printf "probes: a probe on the metrics port (%s) needs metrics.enabled: without it nothing listens there" $port) -}}
{{- end -}}
{{- end -}}
{{- toYaml $probe -}}
{{- end -}}

{{/* Egress of the server and preflight pods with networkPolicy.egress. */}}
{{- define "rkms.egressRules" -}}
# DNS.
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
# HTTPS: KMS, DynamoDB and STS endpoints (public or VPC endpoints).
- ports:
    - port: 443
      protocol: TCP
{{- with .Values.networkPolicy.egress.extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}

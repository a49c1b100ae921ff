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
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* A probe from values, with the scheme of the API port. */}}
{{- define "rkms.probe" -}}
{{- $probe := deepCopy .probe -}}
{{- if and $probe.httpGet .root.Values.tls.enabled -}}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" -}}
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

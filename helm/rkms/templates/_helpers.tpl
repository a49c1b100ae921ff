{{- define "rkms.fullname" -}}
{{- printf "%s" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rkms.labels" -}}
app.kubernetes.io/name: rkms
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "rkms.selector" -}}
app.kubernetes.io/name: rkms
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rkms.serviceAccountName" -}}
{{- default (include "rkms.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

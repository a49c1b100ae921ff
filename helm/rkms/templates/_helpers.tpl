{{/* Names and labels. */}}

{{- define "rkms.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release name, or release-name when it does not contain the chart name. */}}
{{- define "rkms.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object. The server pods also carry rkms.selector. */}}
{{- define "rkms.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rkms
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "rkms.labels" -}}
{{ include "rkms.commonLabels" . }}
app.kubernetes.io/name: {{ include "rkms.name" . }}
app.kubernetes.io/component: server
{{- end -}}

{{/* Matches the server pods only: test and hook pods carry other names. */}}
{{- define "rkms.selector" -}}
app.kubernetes.io/name: {{ include "rkms.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Pods with this label set to "true" may call the API (NetworkPolicy). */}}
{{- define "rkms.clientLabel" -}}
{{ include "rkms.fullname" . }}-client
{{- end -}}

{{- define "rkms.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rkms.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "rkms.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Paths inside the pod. */}}
{{- define "rkms.configDir" -}}/etc/rkms{{- end -}}
{{- define "rkms.tokensDir" -}}/var/run/secrets/rkms/tokens{{- end -}}
{{- define "rkms.tlsDir" -}}/var/run/secrets/rkms/tls{{- end -}}
{{- define "rkms.crlDir" -}}/var/run/secrets/rkms/crl{{- end -}}

{{/* The Secret holding client tokens: the user's, or the chart's. */}}
{{- define "rkms.tokensSecretName" -}}
{{- default (printf "%s-tokens" (include "rkms.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* Names of the token-mode clients whose token is a file from the tokens Secret, one a line. */}}
{{- define "rkms.fileTokenClients" -}}
{{- if eq .Values.auth.mode "token" -}}
{{- range .Values.auth.clients -}}
{{- if not (or .token_sha256 .token_env .token_file) }}
{{ .name }}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "rkms.usesTokensSecret" -}}
{{- if trim (include "rkms.fileTokenClients" .) -}}true{{- end -}}
{{- end -}}

{{/* HTTP scheme of the API port. */}}
{{- define "rkms.scheme" -}}
{{- if .Values.tls.enabled -}}HTTPS{{- else -}}HTTP{{- end -}}
{{- end -}}

{{/*
server.shutdown_grace_ms in whole seconds, rounded up.
*/}}
{{- define "rkms.shutdownGraceSeconds" -}}
{{- $ms := int64 (dig "server" "shutdown_grace_ms" 10000 .Values.config) -}}
{{- div (add $ms 999) 1000 -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds: the preStop sleep, then the drain, then a
margin for the process to exit before Kubernetes sends SIGKILL.
*/}}
{{- define "rkms.terminationGracePeriodSeconds" -}}
{{- $floor := add (int64 .Values.lifecycle.preStopSleepSeconds) (int64 (include "rkms.shutdownGraceSeconds" .)) -}}
{{- if .Values.terminationGracePeriodSeconds -}}
{{- if le (int64 .Values.terminationGracePeriodSeconds) $floor -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above lifecycle.preStopSleepSeconds + config.server.shutdown_grace_ms (%d s), or in-flight requests are cut off" (int64 .Values.terminationGracePeriodSeconds) $floor) -}}
{{- end -}}
{{- int64 .Values.terminationGracePeriodSeconds -}}
{{- else -}}
{{- add $floor 5 -}}
{{- end -}}
{{- end -}}

{{/*
A listen address: address:port, an IPv6 address in brackets ([::]:8080).
*/}}
{{- define "rkms.listenOn" -}}
{{- if contains ":" (toString .address) -}}
{{- printf "[%s]:%d" (toString .address) (int .port) -}}
{{- else -}}
{{- printf "%s:%d" (toString .address) (int .port) -}}
{{- end -}}
{{- end -}}

{{/*
The rkms config file. `config` is passed through as it is; the chart owns
what depends on the pod: the listen addresses, the TLS file paths and [auth]
(with token files from the tokens Secret).
*/}}
{{- define "rkms.configToml" -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- $server := deepCopy (get $cfg "server" | default dict) -}}
{{- $_ := set $server "listen" (include "rkms.listenOn" (dict "address" .Values.listenAddress "port" .Values.containerPorts.http)) -}}
{{- if .Values.metrics.enabled -}}
{{- $_ := set $server "metrics_listen" (include "rkms.listenOn" (dict "address" .Values.listenAddress "port" .Values.containerPorts.metrics)) -}}
{{- else -}}
{{- $_ := set $server "metrics_listen" "" -}}
{{- end -}}
{{- if .Values.tls.enabled -}}
{{- $tls := dict "cert" (printf "%s/tls.crt" (include "rkms.tlsDir" .)) "key" (printf "%s/tls.key" (include "rkms.tlsDir" .)) -}}
{{- if or .Values.tls.verifyClients (eq .Values.auth.mode "mtls") -}}
{{- $_ := set $tls "client_ca" (printf "%s/ca.crt" (include "rkms.tlsDir" .)) -}}
{{- if .Values.tls.clientCrl.secretName -}}
{{- $_ := set $tls "client_crl" (printf "%s/ca.crl" (include "rkms.crlDir" .)) -}}
{{- end -}}
{{- else if .Values.tls.clientCrl.secretName -}}
{{- fail "tls.clientCrl.secretName: revocation lists apply to client certificates: needs auth.mode \"mtls\" or tls.verifyClients" -}}
{{- end -}}
{{- $_ := set $server "tls" $tls -}}
{{- else if eq .Values.auth.mode "mtls" -}}
{{- fail "auth.mode = \"mtls\" needs tls.enabled = true and tls.secretName (with ca.crt)" -}}
{{- else -}}
{{- /* tls.allowPlaintext, checked in deployment.yaml: rkms needs it said too. */ -}}
{{- $_ := set $server "allow_plaintext" true -}}
{{- end -}}
{{- $_ := set $cfg "server" $server -}}
{{- /* kms.aws.key_ids and kms.aws.endpoints: every entry must name a
region of kms.regions, and every region needs a key id. The chart has no
default key ids, so a region name mistyped in key_ids is an error here
rather than a region quietly given some default key. */ -}}
{{- $kms := deepCopy (get $cfg "kms" | default dict) -}}
{{- $kmsAws := deepCopy (get $kms "aws" | default dict) -}}
{{- $regions := list -}}
{{- range $region := get $kms "regions" | default list -}}
{{- $regions = append $regions (toString $region) -}}
{{- end -}}
{{- range $map := list "key_ids" "endpoints" -}}
{{- range $region, $_ := get $kmsAws $map | default dict -}}
{{- if not (has $region $regions) -}}
{{- fail (printf "config.kms.aws.%s.%s: %s is not in config.kms.regions (%s); a region name mistyped here, or one removed from kms.regions, must be corrected or removed" $map $region $region (join ", " $regions)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $keyIds := get $kmsAws "key_ids" | default dict -}}
{{- $missing := list -}}
{{- range $region := $regions -}}
{{- if not (get $keyIds $region) -}}
{{- $missing = append $missing $region -}}
{{- end -}}
{{- end -}}
{{- if $missing -}}
{{- fail (printf "config.kms.aws.key_ids has no KMS key for %s (in config.kms.regions): set config.kms.aws.key_ids.<region> to the key's id, ARN or alias for every region in config.kms.regions (Terraform's modules/config output helm_values does). Since chart 0.3 there is no default; a release that used chart 0.2's sets alias/rkms for each region to keep its keys" (join ", " $missing)) -}}
{{- end -}}
{{- /* min_regions_on_create: 2 (or 1 with one region) unless set. */ -}}
{{- $minRegions := get $kms "min_regions_on_create" -}}
{{- if or (not (hasKey $kms "min_regions_on_create")) (kindIs "invalid" $minRegions) -}}
{{- $_ := set $kms "min_regions_on_create" (min 2 (len $regions)) -}}
{{- else if gt (int64 $minRegions) (len $regions) -}}
{{- fail (printf "config.kms.min_regions_on_create (%d) is more than the %d region(s) of config.kms.regions" (int64 $minRegions) (len $regions)) -}}
{{- end -}}
{{- $_ := set $kms "aws" $kmsAws -}}
{{- $_ := set $cfg "kms" $kms -}}
{{- /* Pairs of values rkms refuses at start: refused here, with the key. */ -}}
{{- $cache := get $cfg "cache" | default dict -}}
{{- $ttl := int64 (get $cache "ttl_seconds" | default 0) -}}
{{- if and (gt $ttl 0) (hasKey $cache "max_entries") (eq (int64 (get $cache "max_entries")) 0) -}}
{{- fail "config.cache.max_entries: must be at least 1 while config.cache.ttl_seconds > 0 (ttl_seconds: 0 turns the cache off)" -}}
{{- end -}}
{{- if and (eq $ttl 0) (gt (int64 (get $cache "stale_if_error_seconds" | default 0)) 0) -}}
{{- fail "config.cache.stale_if_error_seconds: must be 0 while config.cache.ttl_seconds is 0 (no cache, nothing stale to serve)" -}}
{{- end -}}
{{- $clients := list -}}
{{- range .Values.auth.clients -}}
{{- $client := omit . "token" -}}
{{- if and (eq $.Values.auth.mode "mtls") (or .token_sha256 .token_env .token_file) -}}
{{- fail (printf "auth.clients %q: auth.mode \"mtls\" names clients by certificate; remove its token_sha256, token_env or token_file" .name) -}}
{{- end -}}
{{- if and (eq $.Values.auth.mode "token") (not (or .token_sha256 .token_env .token_file)) -}}
{{- if or (not (regexMatch "^[-._a-zA-Z0-9]{1,253}$" .name)) (regexMatch "^[.][.]?$|^[.][.]" .name) -}}
{{- fail (printf "auth.clients name %q: in token mode a client whose token is a file from the tokens Secret needs a name of letters, digits, '-', '_' and '.' (not starting with \"..\"): the name is the Secret key and the file name. Rename it, or give it token_sha256 or token_env" .name) -}}
{{- end -}}
{{- $_ := set $client "token_file" (printf "%s/%s" (include "rkms.tokensDir" $) .name) -}}
{{- end -}}
{{- $clients = append $clients $client -}}
{{- end -}}
{{- $auth := dict "mode" .Values.auth.mode "allow_unauthenticated" .Values.auth.allow_unauthenticated -}}
{{- if ne .Values.auth.mode "none" -}}
{{- $_ := set $auth "clients" $clients -}}
{{- end -}}
{{- $_ := set $cfg "auth" $auth -}}
# rkms config rendered by the {{ .Chart.Name }} chart {{ .Chart.Version }}; set it through the chart's values.
{{- include "rkms.toml.table" (dict "path" (list) "table" $cfg) }}
{{ end -}}

{{/*
A minimal TOML writer for the config: scalars and arrays of scalars, tables,
and arrays of flat tables (auth.clients). Keys are sorted; a key that is not
plain letters, digits and underscores (a region name) is quoted.
*/}}
{{- define "rkms.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "rkms.toml.path" -}}
{{- $parts := list -}}
{{- range . -}}{{- $parts = append $parts (include "rkms.toml.key" .) -}}{{- end -}}
{{- join "." $parts -}}
{{- end -}}

{{- define "rkms.toml.value" -}}
{{- if kindIs "string" . -}}
{{- toJson . -}}
{{- else if kindIs "bool" . -}}
{{- ternary "true" "false" . -}}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) -}}
{{- if eq (float64 (int64 .)) (float64 .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if kindIs "slice" . -}}
[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "rkms.toml.value" $v }}{{ end }}]
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{- define "rkms.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) -}}{{- if kindIs "map" (first .) -}}true{{- end -}}{{- end -}}
{{- end -}}

{{- define "rkms.toml.table" -}}
{{- $path := .path -}}
{{- $table := .table -}}
{{- $scalars := list -}}
{{- range $key := keys $table -}}
{{- $value := get $table $key -}}
{{- if and (not (kindIs "invalid" $value)) (not (kindIs "map" $value)) (not (include "rkms.toml.isTableArray" $value)) -}}
{{- $scalars = append $scalars $key -}}
{{- end -}}
{{- end -}}
{{- /* A table holding only tables needs no header of its own. */}}
{{- if and $path (or $scalars (not $table)) }}

[{{ include "rkms.toml.path" $path }}]
{{- end }}
{{- range $key := $scalars | sortAlpha }}
{{ include "rkms.toml.key" $key }} = {{ include "rkms.toml.value" (get $table $key) }}
{{- end }}
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if kindIs "map" $value }}
{{- include "rkms.toml.table" (dict "path" (append $path $key) "table" $value) }}
{{- else if include "rkms.toml.isTableArray" $value }}
{{- range $entry := $value }}

[[{{ include "rkms.toml.path" (append $path $key) }}]]
{{- range $k := keys $entry | sortAlpha }}
{{- $v := get $entry $k }}
{{- if not (kindIs "invalid" $v) }}
{{ include "rkms.toml.key" $k }} = {{ include "rkms.toml.value" $v }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Names. */}}
{{- define "authproxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "authproxy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "authproxy.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "authproxy.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Cluster-scoped objects carry the namespace: one release per namespace cannot collide. */}}
{{- define "authproxy.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "authproxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "authproxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "authproxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "authproxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "authproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "authproxy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "authproxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end }}

{{- define "authproxy.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Checks values once; every template that renders objects includes it. */}}
{{- define "authproxy.validate" -}}
{{- if not (has .Values.mode (list "deployment" "sidecar" "kubeApiAuth" "agent")) }}
{{- fail (printf "mode: %q is not one of deployment, sidecar, kubeApiAuth, agent" .Values.mode) }}
{{- end }}
{{- if eq .Values.mode "agent" }}
{{- if not .Values.agent.proxyUrl }}
{{- fail "agent.proxyUrl: the proxy's https:// URL is required in agent mode" }}
{{- end }}
{{- if not .Values.agent.cluster }}
{{- fail "agent.cluster: this cluster's name at the proxy is required in agent mode" }}
{{- end }}
{{- if not (or .Values.agent.existingSecret .Values.agent.token) }}
{{- fail "agent: set agent.token (the cluster's registration token) or agent.existingSecret" }}
{{- end }}
{{- end }}
{{- range .Values.agentClusters }}
{{- if not (and .name .token) }}
{{- fail "agentClusters: every entry needs name and token" }}
{{- end }}
{{- end }}
{{- if and (ne .Values.mode "agent") (not .Values.tls.existingSecret) (not (and .Values.tls.cert .Values.tls.key)) }}
{{- fail "tls: set tls.existingSecret (a kubernetes.io/tls Secret) or both tls.cert and tls.key" }}
{{- end }}
{{- if and .Values.issuedTokens.enabled (not .Values.issuedTokens.keys) (not (and .Values.issuedTokens.existingSecret .Values.issuedTokens.keyNames)) }}
{{- fail "issuedTokens: set issuedTokens.keys, or issuedTokens.existingSecret with issuedTokens.keyNames" }}
{{- end }}
{{- range .Values.extraVolumes }}
{{- if has .name (list "kube-api-access" "config" "tls" "ldap" "signing-keys" "agent-tokens") }}
{{- fail (printf "extraVolumes: the name %q is the chart's own volume; choose another" .name) }}
{{- end }}
{{- end }}
{{- if and (dig "authentication" "ldap" nil .Values.config) (not (or .Values.ldap.existingSecret .Values.ldap.bindPassword)) }}
{{- fail "ldap: config.authentication.ldap needs ldap.existingSecret or ldap.bindPassword" }}
{{- end }}
{{- end }}

{{- define "authproxy.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "authproxy.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{- define "authproxy.ldapSecretName" -}}
{{- default (printf "%s-ldap" (include "authproxy.fullname" .)) .Values.ldap.existingSecret }}
{{- end }}

{{- define "authproxy.signingSecretName" -}}
{{- default (printf "%s-signing-keys" (include "authproxy.fullname" .)) .Values.issuedTokens.existingSecret }}
{{- end }}

{{/* The namespace of the revocation store. */}}
{{- define "authproxy.revocationNamespace" -}}
{{- default .Release.Namespace .Values.issuedTokens.revocation.namespace }}
{{- end }}

{{/* Ordered signing-key file names: the first signs. */}}
{{- define "authproxy.signingKeyNames" -}}
{{- if .Values.issuedTokens.keys }}
{{- range .Values.issuedTokens.keys }}
- {{ .name }}
{{- end }}
{{- else }}
{{- range .Values.issuedTokens.keyNames }}
- {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* How the account impersonates: "constrained" or "legacy" (rbac.impersonation;
     empty: constrained where the cluster runs kube 1.36 or later). */}}
{{- define "authproxy.impersonation" -}}
{{- if .Values.rbac.impersonation }}
{{- .Values.rbac.impersonation }}
{{- else if semverCompare ">=1.36.0-0" .Capabilities.KubeVersion.Version }}
{{- "constrained" }}
{{- else }}
{{- "legacy" }}
{{- end }}
{{- end }}

{{/* The config file: the user's `config` with the chart's paths. */}}
{{- define "authproxy.configFile" -}}
{{- $config := deepCopy .Values.config }}
{{- /* The proxy is told what its account may impersonate (the chart's ClusterRole wins over config). */}}
{{- $_ := set $config "identityHeaders" (merge (dict "rbac" (include "authproxy.impersonation" .)) (deepCopy (default dict $config.identityHeaders))) }}
{{- $_ := set $config "listen" (printf "0.0.0.0:%v" .Values.port) }}
{{- if eq .Values.mode "sidecar" }}
{{- $_ := set $config "upstream" (merge (deepCopy (default dict $config.upstream)) .Values.sidecar.upstream) }}
{{- end }}
{{- $tls := dict "certFile" "/etc/authproxy/tls/tls.crt" "keyFile" "/etc/authproxy/tls/tls.key" }}
{{- if .Values.tls.clientCA }}
{{- $_ := set $tls "clientCAFile" "/etc/authproxy/config/client-ca.crt" }}
{{- end }}
{{- $_ := set $config "tls" $tls }}
{{- $_ := set $config "shutdownTimeout" (printf "%vs" .Values.shutdownTimeoutSeconds) }}
{{- /* The metrics listener also answers the probes, out of reach of the proxy listener's caps. */}}
{{- $_ := set $config "metrics" (merge (dict "listen" (include "authproxy.metricsListen" .)) (deepCopy (default dict $config.metrics))) }}
{{- $authn := default dict $config.authentication }}
{{- if $authn.ldap }}
{{- $_ := set $authn.ldap "bindPasswordFile" "/etc/authproxy/ldap/bind-password" }}
{{- end }}
{{- if .Values.issuedTokens.enabled }}
{{- $files := list }}
{{- range (include "authproxy.signingKeyNames" . | fromYamlArray) }}
{{- $files = append $files (printf "/etc/authproxy/signing-keys/%s" .) }}
{{- end }}
{{- $issued := dict "issuer" .Values.issuedTokens.issuer "lifetime" .Values.issuedTokens.lifetime "signingKeyFiles" $files }}
{{- if and .Values.issuedTokens.revocation.enabled (ne .Values.mode "kubeApiAuth") }}
{{- $_ := set $issued "revocation" (dict "namespace" (include "authproxy.revocationNamespace" .) "serveBeforeFirstList" .Values.issuedTokens.revocation.serveBeforeFirstList) }}
{{- end }}
{{- $_ := set $authn "issuedTokens" (merge $issued (deepCopy (default dict $authn.issuedTokens))) }}
{{- end }}
{{- $_ := set $config "authentication" $authn }}
{{- if .Values.agentClusters }}
{{- $upstreams := default list $config.upstreams }}
{{- range .Values.agentClusters }}
{{- $upstreams = append $upstreams (dict "name" .name "via" "agent" "agent" (dict "tokenFile" (printf "/etc/authproxy/agent-tokens/%s" .name))) }}
{{- end }}
{{- $_ := set $config "upstreams" $upstreams }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* Where the metrics listener (metrics and probes) listens. */}}
{{- define "authproxy.metricsListen" -}}
{{- if eq .Values.mode "kubeApiAuth" }}
{{- .Values.kubeApiAuth.metricsListen }}
{{- else }}
{{- printf "0.0.0.0:%v" .Values.metrics.port }}
{{- end }}
{{- end }}

{{/* HTTPS when config.metrics.tls is set, else HTTP. */}}
{{- define "authproxy.metricsScheme" -}}
{{- ternary "HTTPS" "HTTP" (not (empty (dig "tls" nil (default dict .Values.config.metrics)))) }}
{{- end }}

{{/* Pod annotations that roll the pods when their config or secrets change. */}}
{{- define "authproxy.checksums" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secrets: {{ include (print $.Template.BasePath "/secrets.yaml") . | sha256sum }}
{{- end }}

{{/* The volumes every mode mounts. */}}
{{- define "authproxy.volumes" -}}
{{- /* The service account's token, mounted in the authproxy container only
       (the pod does not automount it): in sidecar mode the application
       beside it never holds a token that may impersonate anyone. */}}
{{- if ne .Values.mode "kubeApiAuth" }}
- name: kube-api-access
  projected:
    sources:
    - serviceAccountToken: {path: token, expirationSeconds: 3607}
    - configMap:
        name: kube-root-ca.crt
        items: [{key: ca.crt, path: ca.crt}]
    - downwardAPI:
        items: [{path: namespace, fieldRef: {apiVersion: v1, fieldPath: metadata.namespace}}]
{{- end }}
- name: config
  configMap:
    name: {{ include "authproxy.fullname" . }}
- name: tls
  secret:
    secretName: {{ include "authproxy.tlsSecretName" . }}
{{- if dig "authentication" "ldap" nil .Values.config }}
- name: ldap
  secret:
    secretName: {{ include "authproxy.ldapSecretName" . }}
    items:
    - {key: {{ ternary .Values.ldap.existingSecretKey "bind-password" (not (empty .Values.ldap.existingSecret)) }}, path: bind-password}
{{- end }}
{{- if .Values.issuedTokens.enabled }}
- name: signing-keys
  secret:
    secretName: {{ include "authproxy.signingSecretName" . }}
{{- end }}
{{- if .Values.agentClusters }}
- name: agent-tokens
  secret:
    secretName: {{ include "authproxy.fullname" . }}-agent-tokens
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The authproxy container (all modes; the sidecar snippet is this container). */}}
{{- define "authproxy.container" -}}
- name: authproxy
  image: {{ include "authproxy.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if eq .Values.mode "kubeApiAuth" }}
  args: [webhook, --config, /etc/authproxy/config/authproxy.yaml, --listen, {{ .Values.kubeApiAuth.listen | quote }}]
  {{- else }}
  args: [serve, --config, /etc/authproxy/config/authproxy.yaml]
  {{- end }}
  {{- if ne .Values.mode "kubeApiAuth" }}
  ports:
  - {name: https, containerPort: {{ .Values.port }}, protocol: TCP}
  - {name: metrics, containerPort: {{ .Values.metrics.port }}, protocol: TCP}
  {{- end }}
  {{- /* Probes go to the metrics listener: clients filling the proxy
         listener's caps cannot make the kubelet restart the pod. */}}
  {{- $host := "" }}
  {{- $port := "metrics" }}
  {{- $scheme := include "authproxy.metricsScheme" . }}
  {{- if eq .Values.mode "kubeApiAuth" }}
  {{- $host = (splitList ":" .Values.kubeApiAuth.metricsListen | first) }}
  {{- $port = (splitList ":" .Values.kubeApiAuth.metricsListen | last | int) }}
  {{- end }}
  readinessProbe:
    httpGet: {path: /readyz, port: {{ $port }}, scheme: {{ $scheme }}{{ if $host }}, host: {{ $host }}{{ end }}}
    periodSeconds: 5
    failureThreshold: 2
  livenessProbe:
    httpGet: {path: /livez, port: {{ $port }}, scheme: {{ $scheme }}{{ if $host }}, host: {{ $host }}{{ end }}}
    periodSeconds: 10
    failureThreshold: 6
  lifecycle:
    preStop:
      sleep: {seconds: {{ .Values.preStopSleepSeconds }}}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
  {{- if ne .Values.mode "kubeApiAuth" }}
  - {name: kube-api-access, mountPath: /var/run/secrets/kubernetes.io/serviceaccount, readOnly: true}
  {{- end }}
  - {name: config, mountPath: /etc/authproxy/config, readOnly: true}
  - {name: tls, mountPath: /etc/authproxy/tls, readOnly: true}
  {{- if dig "authentication" "ldap" nil .Values.config }}
  - {name: ldap, mountPath: /etc/authproxy/ldap, readOnly: true}
  {{- end }}
  {{- if .Values.issuedTokens.enabled }}
  - {name: signing-keys, mountPath: /etc/authproxy/signing-keys, readOnly: true}
  {{- end }}
  {{- if .Values.agentClusters }}
  - {name: agent-tokens, mountPath: /etc/authproxy/agent-tokens, readOnly: true}
  {{- end }}
  {{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* Pod-level settings shared by the Deployment and the DaemonSet. */}}
{{- define "authproxy.podSpecCommon" -}}
serviceAccountName: {{ include "authproxy.serviceAccountName" . }}
# mounted in the authproxy container alone (volume kube-api-access)
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ add .Values.preStopSleepSeconds .Values.shutdownTimeoutSeconds 5 }}
containers:
  {{- include "authproxy.container" . | nindent 2 }}
volumes:
  {{- include "authproxy.volumes" . | nindent 2 }}
{{- end }}

{{/* What the agent pods roll on: the registration token and the proxy CA. */}}
{{- define "authproxy.agentSecretValues" -}}
{{- printf "%s|%s|%s" .Values.agent.token .Values.agent.proxyCA .Values.agent.existingSecret }}
{{- end }}

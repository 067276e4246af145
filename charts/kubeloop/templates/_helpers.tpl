{{/*
The chart name, or nameOverride.
*/}}
{{- define "kubeloop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The object name prefix: fullnameOverride, else "<release>-<name>", else just the release
name when it already contains the chart name (a release called "kubeloop" gets "kubeloop").
Truncated so that "<fullname>-operator-webhook" still fits in 63 characters.
*/}}
{{- define "kubeloop.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
chart label: name-version.
*/}}
{{- define "kubeloop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the operator's pods. Stable across upgrades: no chart or app version.
*/}}
{{- define "kubeloop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeloop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "kubeloop.labels" -}}
helm.sh/chart: {{ include "kubeloop.chart" . }}
app.kubernetes.io/name: {{ include "kubeloop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubeloop
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "kubeloop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-operator" (include "kubeloop.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The ServiceAccount of Jobs and serving pods ("" = each namespace's default).
*/}}
{{- define "kubeloop.workloadServiceAccountName" -}}
{{- $sa := .Values.workloads.serviceAccount }}
{{- if and $sa.create (not .Values.watch.clusterWide) }}
{{- default (printf "%s-workload" (include "kubeloop.fullname" .)) $sa.name }}
{{- else }}
{{- $sa.name }}
{{- end }}
{{- end }}

{{/*
The watched namespaces (namespaced mode) as a JSON list: watch.namespaces, or the release
namespace.
*/}}
{{- define "kubeloop.watchNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- .Values.watch.namespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}: the digest wins, the tag defaults to
the chart's appVersion. Call with (dict "image" .Values.x.image "root" $).
*/}}
{{- define "kubeloop.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/*
Peering: kopf peering (--peering) when more than one replica runs.
*/}}
{{- define "kubeloop.peering" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}

{{/*
The artifacts claim name ("" = none).
*/}}
{{- define "kubeloop.volumeClaimName" -}}
{{- $vc := .Values.artifacts.volumeClaim }}
{{- if $vc.create }}
{{- default (printf "%s-artifacts" (include "kubeloop.fullname" .)) $vc.name }}
{{- else }}
{{- $vc.name }}
{{- end }}
{{- end }}

{{/*
The environment variables an object-store credentials Secret may hold, space-separated:
kubeloop.contracts.storage.CREDENTIAL_KEYS (a chart test keeps the two equal).
*/}}
{{- define "kubeloop.credentialKeys" -}}
AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_REGION AWS_ENDPOINT_URL AZURE_STORAGE_ACCOUNT_NAME AZURE_STORAGE_ACCOUNT_KEY AZURE_STORAGE_CONNECTION_STRING AZURE_STORAGE_SAS_TOKEN AZURE_STORAGE_CLIENT_ID AZURE_STORAGE_CLIENT_SECRET AZURE_STORAGE_TENANT_ID GOOGLE_CLOUD_PROJECT
{{- end }}

{{/*
The Secret holding the webhook token, and its key.
*/}}
{{- define "kubeloop.webhookSecretName" -}}
{{- default (printf "%s-webhook" (include "kubeloop.fullname" .)) .Values.alertReceiver.existingSecret }}
{{- end }}
{{- define "kubeloop.webhookSecretKey" -}}
{{- if .Values.alertReceiver.existingSecret }}{{ .Values.alertReceiver.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/*
The rules a namespace-scoped operator needs in each namespace it watches, and the
cluster-wide operator everywhere. Exactly what the handlers and kopf call; a test runs
the operator under these rules and fails on any 403.
*/}}
{{- define "kubeloop.operatorRules" -}}
# The five kinds: kopf lists and watches them and patches them (finalizer
# kubeloop.io/finalizer, its progress annotations; the promote/abort annotations of a
# ModelDeployment), handlers read them.
- apiGroups: [kubeloop.io]
  resources: [datasets, modeldeployments, batchpredictions]
  verbs: [get, list, watch, patch]
# TrainingJobs are created by the retrain policy, ModelVersions by finished TrainingJobs;
# a ModelDeployment labels the versions it serves (served-by.kubeloop.io/<name>).
- apiGroups: [kubeloop.io]
  resources: [trainingjobs, modelversions]
  verbs: [get, list, watch, patch, create]
# A ModelDeployment's spec.retention deletes versions past keepVersions (never a served
# one: the chart's admission policy refuses that to everyone).
- apiGroups: [kubeloop.io]
  resources: [modelversions]
  verbs: [delete]
# Status is written through the status subresource (merge patches).
- apiGroups: [kubeloop.io]
  resources: [datasets/status, trainingjobs/status, modelversions/status, modeldeployments/status, batchpredictions/status]
  verbs: [patch]
# Snapshot, trainer and prediction Jobs: created once, then read (a scheduled prediction's
# latest Job by the name its CronJob gives it: never listed to find one). Every child kind
# is also listed and watched (label app.kubernetes.io/managed-by=kubeloop): a change wakes
# its parent, and an unchanged child is not applied again.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create]
# A scheduled BatchPrediction's CronJob: server-side apply (a PATCH; `create` when the apply
# creates it), deleted when the schedule leaves the spec.
- apiGroups: [batch]
  resources: [cronjobs]
  verbs: [list, watch, create, patch, delete]
# A finished Job's pods carry the trainer's termination message.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# Serving: server-side apply of Deployments, Services, the routing ConfigMap and the HPA
# (a PATCH; the API server also checks `create` when the apply creates the object); the
# canary's Deployment and Service and an unused HPA are deleted.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, patch]
# Each ModelDeployment's stable pods follow their routing ConfigMap through the API
# (docs/canary.md): the operator applies their ServiceAccount, a Role allowing get/list/
# watch on that one ConfigMap (resourceNames) and its RoleBinding; all three go with
# their owner by the garbage collector. The API server lets an account grant only what
# it holds itself, so the operator holds get/list/watch on ConfigMaps here (it reads
# none of them); it has no escalate or bind, so it can grant nothing more.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [list, watch, create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [list, watch, create, patch]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, watch, create, patch, delete]
# The NetworkPolicy of a ModelDeployment with spec.networkPolicy: applied, and deleted
# when the field goes.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch, create, patch, delete]
# The HTTPRoute of a ModelDeployment with canary.router gateway (Gateway API): applied,
# and deleted when the router goes back to the pods.
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [create, patch, delete]
# Each ModelDeployment's feedback-token Secret: created once (an existing one is never
# read, changed or listed), deleted with its owner by the garbage collector.
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
# Events on the objects (kopf and the retrain policy).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

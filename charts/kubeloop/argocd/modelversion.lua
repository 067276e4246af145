-- kubeloop.io/ModelVersion: its own part, after argocd/common.lua.
-- Healthy: the artifact exists and its sha256 matches. Degraded: it does not exist or
-- its digest differs (a hand-registered version with a wrong URI or digest), or the spec
-- cannot be acted on. Progressing: the store could not be read yet.
return fromReady({InvalidSpec = true, ArtifactNotFound = true, DigestMismatch = true})

-- kubeloop.io/Dataset: its own part, after argocd/common.lua.
-- Ready: a snapshot succeeded (also when a later refresh failed: the last good
-- version stays current). Degraded: the spec cannot be acted on, or the first snapshot
-- failed. Progressing: a snapshot Job is running.
return fromReady({InvalidSpec = true, SnapshotFailed = true})

-- kubeloop.io/Dataset: its own part, after argocd/common.lua.
-- Ready: a snapshot succeeded (also when a later refresh failed: the last good
-- version stays current). Degraded: the spec cannot be acted on, or the first snapshot
-- failed. Progressing: a snapshot Job is running.
local degraded = {InvalidSpec = true, SnapshotFailed = true}
if ready.status == "True" then
  hs.status = "Healthy"
elseif ready.status == "False" and degraded[ready.reason] then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = describe(ready)
return hs

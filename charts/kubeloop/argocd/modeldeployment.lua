-- kubeloop.io/ModelDeployment: its own part, after argocd/common.lua.
-- Degraded: the Degraded condition, a served version that is gone, a spec that cannot be
-- acted on, or an aborted canary (as Argo Rollouts reports an aborted rollout).
-- Progressing: a canary is rolling out, or serving pods are not ready yet. Healthy:
-- serving, no canary in flight.
local degraded = {InvalidSpec = true, VersionMissing = true}
local degradedCondition = condition("Degraded")
local progressing = condition("Progressing")
if degradedCondition ~= nil and degradedCondition.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degradedCondition)
elseif ready.status == "False" and degraded[ready.reason] then
  hs.status = "Degraded"
  hs.message = describe(ready)
elseif progressing ~= nil and progressing.status == "False" and progressing.reason == "CanaryAborted" then
  hs.status = "Degraded"
  hs.message = describe(progressing)
elseif progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(progressing)
elseif ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
else
  hs.status = "Progressing"
  hs.message = describe(ready)
end
return hs

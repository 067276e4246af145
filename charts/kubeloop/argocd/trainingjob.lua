-- kubeloop.io/TrainingJob: its own part, after argocd/common.lua.
-- Healthy: trained and published as a ModelVersion. Degraded: training failed, the
-- quality gate rejected the model, or the spec cannot be acted on. Progressing: waiting
-- for the Dataset, or training.
local degraded = {InvalidSpec = true, TrainingFailed = true, GateRejected = true}
local phase = obj.status.phase
if ready.status == "True" then
  hs.status = "Healthy"
elseif (ready.status == "False" and degraded[ready.reason]) or phase == "Failed" or phase == "Rejected" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = describe(ready)
return hs

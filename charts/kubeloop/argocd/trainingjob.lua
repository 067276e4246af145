-- kubeloop.io/TrainingJob: its own part, after argocd/common.lua.
-- Healthy: trained and published as a ModelVersion. Degraded: training failed, the
-- quality gate rejected the model, or the spec cannot be acted on. Progressing: waiting
-- for the Dataset, or training.
local phase = obj.status.phase
return fromReady(
  {InvalidSpec = true, TrainingFailed = true, GateRejected = true},
  phase == "Failed" or phase == "Rejected"
)

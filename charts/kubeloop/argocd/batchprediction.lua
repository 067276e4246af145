-- kubeloop.io/BatchPrediction: its own part, after argocd/common.lua.
-- Healthy: the predictions are written (a one-off run), or the schedule's CronJob is in
-- place and its latest run did not fail. Degraded: the run (or a scheduled run) failed,
-- the Dataset is stored in a format predict cannot read, or the spec cannot be acted on.
-- Suspended: spec.suspend. Progressing: waiting for the model or data version, or a
-- run is going.
if obj.status.phase == "Suspended" and ready.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(ready)
  return hs
end
return fromReady(
  {InvalidSpec = true, PredictionFailed = true, UnsupportedDataFormat = true},
  obj.status.phase == "Failed"
)

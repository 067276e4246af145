-- Argo CD health check of kubeloop.io/ModelDeployment (resource.customizations.health.kubeloop.io_ModelDeployment
-- in argocd-cm; docs/install.md). Reads the conditions the operator writes; Lua 5.1
-- compatible (Argo CD runs gopher-lua), tested with lua5.4 and lua5.1.
local hs = {}

-- The condition of the given type, or nil.
local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

-- "<reason>: <message>", or whichever of the two is there.
local function describe(c)
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  return reason
end

local ready = condition("Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Kubeloop operator"
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Kubeloop operator to observe generation " .. tostring(generation)
  return hs
end
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

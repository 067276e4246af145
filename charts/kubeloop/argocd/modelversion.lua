-- Argo CD health check of kubeloop.io/ModelVersion (resource.customizations.health.kubeloop.io_ModelVersion
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
-- Healthy: the artifact exists and its sha256 matches. Degraded: it does not exist or
-- its digest differs (a hand-registered version with a wrong URI or digest), or the spec
-- cannot be acted on. Progressing: the store could not be read yet.
local degraded = {InvalidSpec = true, ArtifactNotFound = true, DigestMismatch = true}
if ready.status == "True" then
  hs.status = "Healthy"
elseif ready.status == "False" and degraded[ready.reason] then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = describe(ready)
return hs

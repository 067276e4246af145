-- Argo CD health check of a Kubeloop kind (argocd-cm key
-- resource.customizations.health.kubeloop.io_<Kind>; docs/install.md): the part every
-- kind shares. The chart appends the kind's own argocd/<kind>.lua to it
-- (templates/argocd-health.yaml). Reads the conditions the operator writes; Lua 5.1
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

-- The health Ready tells: Healthy when True; Degraded when False for one of the
-- `degraded` reasons, or when `failed`; else Progressing. The message describes Ready.
local function fromReady(degraded, failed)
  if ready.status == "True" then
    hs.status = "Healthy"
  elseif (ready.status == "False" and degraded[ready.reason]) or failed then
    hs.status = "Degraded"
  else
    hs.status = "Progressing"
  end
  hs.message = describe(ready)
  return hs
end

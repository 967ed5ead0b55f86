-- Feed every RQ queue from the clients' pending lists (dispatch_lib.lua).
-- Every server runs this after job events and a few times a second; Redis runs
-- it alone, so any number of servers may run it at once.
--
-- ARGV[1]: JSON, {"queues": {name: q, ...}, "per_worker": N}
-- Returns the number of jobs moved.
local spec = cjson.decode(ARGV[1])
local moved = 0
for _, q in pairs(spec.queues) do
    moved = moved + dispatch(q, spec.per_worker)
end
return moved

-- Cancel one task for one server's connection, or one HTTP client, in one
-- atomic step (cancel_lib.lua, which this script is appended to).
--
-- ARGV[1]: JSON, cancel_lib.lua's spec with "task_id".
local spec = cjson.decode(ARGV[1])
return cancel_task(spec, spec.task_id)

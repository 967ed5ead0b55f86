-- Stop the jobs no one waits for any more (the protocol's ABANDON_GRACE_S),
-- as a cancel with no one waiting would (cancel_lib.lua, which this script is
-- appended to). A task becomes a candidate when the last connection of a
-- server that waited for it closed; its "left" mark expires after the grace,
-- by Redis's own clock. Then, if no live server's connection, nor any HTTP
-- client, waits for it, its job is stopped. Any server may run this, at once.
--
-- ARGV[1]: JSON, cancel_lib.lua's spec plus "candidates" (the set),
--          "left_prefix", "count" (candidates looked at per call, at most)
-- Returns {tasks stopped, job_id, worker, job_id, worker, ...}: the running
-- jobs whose workers the caller tells to stop them.
local spec = cjson.decode(ARGV[1])
local stopped, to_stop = 0, {}
for _, task_id in ipairs(redis.call('SRANDMEMBER', spec.candidates, spec.count)) do
    if redis.call('EXISTS', spec.left_prefix .. task_id) == 0 then
        redis.call('SREM', spec.candidates, task_id)
        local answer = cancel_task(spec, task_id)
        if answer[1] == LC.outcome.STOPPED or answer[1] == LC.outcome.STOP then
            stopped = stopped + 1
        end
        if answer[1] == LC.outcome.STOP then
            table.insert(to_stop, answer[2])
            table.insert(to_stop, answer[3] or '')
        end
    end
end
return {stopped, unpack(to_stop)}

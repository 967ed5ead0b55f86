-- Cancelling one task: the logic a client's cancel (cancel.lua) and the
-- stop of abandoned work (abandon.lua) share. Appended after lifecycle.lua
-- and dispatch_lib.lua.
--
-- spec: {"server", "others_here" (bool: another connection of that server
--   waits), "holder" (an HTTP client's identity, or ""), "ttl" (s, of the
--   cancelled mark and the stopped job), "prefix": {payload, task_job, batch,
--   cancelled, waits, holders}, "servers_key", "queues": {name: q (dispatch_lib.lua)}}
-- Returns {outcome, job_id[, worker]}: outcome "unknown", "ended", "continues",
-- "stopped" (taken off its queue), or "stop" (running: the caller tells its
-- worker to stop it, with RQ's stop-job command).
local function cancel_task(spec, task_id)
    local prefix = spec.prefix
    if redis.call('EXISTS', prefix.payload .. task_id) == 1 or redis.call('EXISTS', prefix.cancelled .. task_id) == 1 then
        return {LC.outcome.ENDED, ''}
    end
    local job_id = redis.call('GET', prefix.task_job .. task_id) or task_id
    local job_key = RQ.job_prefix .. job_id
    local f = redis.call('HMGET', job_key, LC_F.state, RQ.origin, LC_F.client, LC_F.worker)
    local state, origin, client, worker = f[1], f[2] or '', f[3] or '', f[4] or ''
    if not state then
        return {LC.outcome.UNKNOWN, ''}
    end
    if LC.final[state] then
        return {LC.outcome.ENDED, ''}
    end

    -- An HTTP client's DELETE withdraws the hold of its POST, and only that.
    local holders_key = prefix.holders .. task_id
    if spec.holder ~= '' and redis.call('SREM', holders_key, spec.holder) == 0 then
        return {LC.outcome.CONTINUES, ''}  -- it holds no wait here: nothing to withdraw, nothing changes
    end
    -- Does anyone else wait? An HTTP client, a connection here (the caller
    -- knows), or one of another live server.
    if redis.call('SCARD', holders_key) > 0 or spec.others_here then
        return {LC.outcome.CONTINUES, ''}
    end
    for _, server in ipairs(redis.call('SMEMBERS', spec.servers_key)) do
        local waits = prefix.waits .. server
        if server ~= spec.server then
            if redis.call('EXISTS', waits) == 0 then
                redis.call('SREM', spec.servers_key, server)  -- it stopped refreshing: gone
            elseif redis.call('SISMEMBER', waits, task_id) == 1 then
                return {LC.outcome.CONTINUES, ''}
            end
        end
    end

    local batch = job_id ~= task_id
    if batch then
        local members_key = prefix.batch .. job_id
        if state == LC.state.STARTED then
            -- The batch computes its other members too, in milliseconds.
            if redis.call('LLEN', members_key) > 1 then
                return {LC.outcome.CONTINUES, ''}
            end
        else
            for _, entry in ipairs(redis.call('LRANGE', members_key, 0, -1)) do
                if string.sub(entry, -#task_id - 1) == ':' .. task_id then
                    redis.call('LREM', members_key, 0, entry)
                end
            end
            redis.call('SET', prefix.cancelled .. task_id, '1', 'EX', spec.ttl)
            redis.call('EXPIRE', LC.task_job_prefix .. task_id, spec.ttl)
            if redis.call('LLEN', members_key) > 0 then
                return {LC.outcome.STOPPED, job_id}  -- the batch runs without it
            end
        end
    end

    redis.call('SET', prefix.cancelled .. task_id, '1', 'EX', spec.ttl)
    if not lc_move(job_key, LC.state.CANCELLED) then
        return {LC.outcome.ENDED, ''}
    end
    -- A stopped job reads as cancelled for CANCELLED_TTL_S, then goes (no key without a TTL).
    lc_settle(job_id, {task_id}, spec.ttl)
    if state == LC.state.STARTED then
        return {LC.outcome.STOP, job_id, worker}
    end
    lc_rq_status(job_key, RQ.canceled)
    local q = spec.queues[origin]
    if q then
        if state == LC.state.QUEUED then
            redis.call('LREM', q.queue_key, 0, job_id)
        else
            -- Out of every list and count at once: the dispatcher never meets it.
            drop_turns(q, job_key, job_id, nil)
            redis.call('ZREM', q.deferred, job_id)
        end
    end
    return {LC.outcome.STOPPED, job_id}
end

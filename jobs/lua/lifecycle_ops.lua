-- The transitions a worker, a job function or the janitor makes
-- (jobs/lifecycle.py Lifecycle), each one atomic step.
--
-- ARGV[1]: JSON {"op", "job_id", "run", "task_ids", ...op's fields}
-- ARGV[2..]: for "finish", the tasks' success messages, in task_ids order.
local spec = cjson.decode(ARGV[1])
local job_key = RQ.job_prefix .. spec.job_id
local F = LC_F

if spec.op == 'start' then
    if not lc_move(job_key, LC.state.STARTED) then
        return 0
    end
    redis.call('HSET', job_key, F.run, spec.run, F.worker, spec.worker)
    redis.call('HINCRBY', job_key, F.runs, 1)
    redis.call('PERSIST', job_key)
    if spec.publish then
        lc_event(spec.task_ids, LC.state.STARTED)
    end
    return 1
end

if spec.op == 'finish' then
    if not lc_move(job_key, LC.state.FINISHED, spec.run) then
        return 0
    end
    redis.call('HDEL', job_key, F.run)
    local payloads = {}
    for i, task_id in ipairs(spec.task_ids) do
        local payload = ARGV[i + 1]
        payloads[task_id] = payload
        if spec.ttl > 0 then
            redis.call('SET', LC.payload_prefix .. task_id, payload, 'EX', spec.ttl)
        else
            redis.call('SET', LC.payload_prefix .. task_id, payload)
        end
    end
    lc_event(spec.task_ids, LC.state.FINISHED, '', '', payloads)
    -- RQ sets the hash's own TTL as it records the success.
    if spec.ttl > 0 then
        redis.call('EXPIRE', LC.batch_prefix .. spec.job_id, spec.ttl)
        for _, task_id in ipairs(spec.task_ids) do
            redis.call('EXPIRE', LC.task_job_prefix .. task_id, spec.ttl)
            redis.call('EXPIRE', LC.holders_prefix .. task_id, spec.ttl)
        end
    end
    return 1
end

if spec.op == 'fail' then
    if not lc_move(job_key, LC.state.FAILED, spec.run) then
        return 0
    end
    redis.call('HDEL', job_key, F.run)
    redis.call('HSET', job_key, F.code, spec.code, F.text, spec.text)
    lc_settle(spec.job_id, spec.task_ids, spec.ttl)
    lc_event(spec.task_ids, LC.state.FAILED, spec.code, spec.text)
    return 1
end

if spec.op == 'run_lost' then
    local f = redis.call('HMGET', job_key, F.state, F.run, F.runs, F.ends)
    if f[1] == LC.state.QUEUED and spec.entry ~= '' then
        -- The run registered itself and died before it claimed the job: whoever
        -- removes its registry entry puts the job back, once.
        if redis.call('ZREM', spec.started_registry, spec.entry) == 0 then
            return ''
        end
        redis.call('LREM', spec.intermediate, 0, spec.job_id)
        if not redis.call('LPOS', spec.queue_key, spec.job_id) then
            redis.call('LPUSH', spec.queue_key, spec.job_id)
        end
        return 'requeued'
    end
    if f[1] ~= LC.state.STARTED or (f[2] or '') ~= spec.run then
        return ''
    end
    if spec.entry ~= '' then
        redis.call('ZREM', spec.started_registry, spec.entry)
    end
    redis.call('LREM', spec.intermediate, 0, spec.job_id)
    local runs = tonumber(f[3] or '1')
    local ends = f[4] and (f[4] .. '; ' .. spec.how) or spec.how
    redis.call('HSET', job_key, F.ends, ends)
    redis.call('HDEL', job_key, F.run)
    if runs < spec.max_runs then
        lc_move(job_key, LC.state.QUEUED)
        lc_rq_status(job_key, RQ.queued)
        redis.call('PERSIST', job_key)
        redis.call('LPUSH', spec.queue_key, spec.job_id)
        return 'requeued'
    end
    lc_move(job_key, LC.state.FAILED)
    local text = 'the job could not be computed: each of its ' .. runs ..
        ' runs ended its worker (' .. ends .. ')'
    redis.call('HSET', job_key, F.code, 'job_failed', F.text, text)
    lc_settle(spec.job_id, spec.task_ids, spec.ttl)
    lc_event(spec.task_ids, LC.state.FAILED, 'job_failed', text)
    return 'failed'
end

if spec.op == 'put_back' then
    -- Claimed by whoever removes it from the list: two janitors never both put it back.
    if redis.call('LREM', spec.intermediate, 0, spec.job_id) == 0 then
        return 0
    end
    local state = lc_state(job_key)
    if state == '' and redis.call('HGET', job_key, RQ.status) == RQ.queued then
        state = LC.state.QUEUED  -- a job enqueued by other means than the service's submit
    elseif state ~= '' and not lc_move(job_key, LC.state.QUEUED) then
        return 0
    end
    if state ~= LC.state.QUEUED then
        return 0
    end
    redis.call('LPUSH', spec.queue_key, spec.job_id)
    return 1
end

if spec.op == 'take' then
    -- A worker takes its next job: the first non-empty queue in the worker's
    -- order gives its first job, moved into the worker's taken list in this
    -- same step, so it is never held in no list. No state changes: a job
    -- taken off its queue stays queued until a run claims it ('start').
    for _, queue_key in ipairs(spec.queue_keys) do
        local job_id = redis.call('LMOVE', queue_key, spec.taken, 'LEFT', 'RIGHT')
        if job_id then
            return {queue_key, job_id}
        end
    end
    return false
end

if spec.op == 'put_back_taken' then
    -- A job in the taken list of a worker that will not start it (dead, or
    -- holding it too long). Claimed by whoever removes it from the list, so
    -- two janitors never both put it back; back to the front of its queue
    -- only if it still waits for a run, and only if it is not there already.
    if redis.call('LREM', spec.taken, 0, spec.job_id) == 0 then
        return 0
    end
    local origin = redis.call('HGET', job_key, RQ.origin)
    if not origin then
        return -1  -- its hash is gone: nothing left to run
    end
    local state = lc_state(job_key)
    if state == '' then
        if redis.call('HGET', job_key, RQ.status) ~= RQ.queued then
            return -1
        end
    elseif state ~= LC.state.QUEUED or not lc_move(job_key, LC.state.QUEUED) then
        return -1  -- started (its run is judged by its own record), cancelled or ended
    end
    local queue_key = RQ.queue_prefix .. origin
    if not redis.call('LPOS', queue_key, spec.job_id) then
        redis.call('LPUSH', queue_key, spec.job_id)
    end
    return 1
end

return redis.error_reply('unknown lifecycle op ' .. tostring(spec.op))

-- A job's life (jobs/lifecycle.py): the only code that writes a job's state.
-- LC (the transition table, field and key names) and RQ (RQ's names) come
-- from the preamble jobs/scripts.py puts in front of every script.

local LC_F = LC.field

-- The state of the job whose hash is job_key ("" when it has none).
local function lc_state(job_key)
    return redis.call('HGET', job_key, LC_F.state) or ''
end

-- Move the job to state `to`, if the table allows the move from its state
-- and, when `run` is given, that run owns the job. Returns the state it
-- left, or false (logged, nothing written) when refused.
local function lc_move(job_key, to, run)
    local f = redis.call('HMGET', job_key, LC_F.state, LC_F.run)
    local from = f[1] or ''
    if run ~= nil and (f[2] or '') ~= run then
        return false
    end
    local allowed = LC.allowed[from]
    if not allowed or not allowed[to] then
        redis.log(redis.LOG_WARNING, 'factorial: refused move of ' .. job_key .. ' from "' .. from .. '" to ' .. to)
        return false
    end
    redis.call('HSET', job_key, LC_F.state, to)
    return from
end

-- Append a job's event (one entry for all its tasks) to the stream every
-- server reads; small success messages travel in it (jobs/lifecycle.py).
local function lc_event(task_ids, state, code, text, payloads)
    local args = {'XADD', LC.stream, 'MAXLEN', '~', LC.maxlen, '*',
                  'ids', table.concat(task_ids, ','), 'state', state}
    if code and code ~= '' then
        table.insert(args, 'code'); table.insert(args, code)
        table.insert(args, 'text'); table.insert(args, text)
    end
    local room = LC.inline_entry
    for task_id, payload in pairs(payloads or {}) do
        if #payload <= math.min(LC.inline_payload, room) then
            table.insert(args, LC.inline_prefix .. task_id); table.insert(args, payload)
            room = room - #payload
        end
    end
    redis.call(unpack(args))
end

-- A job's RQ status field, kept in step for rq-dashboard.
local function lc_rq_status(job_key, status)
    redis.call('HSET', job_key, RQ.status, status)
end

-- A job has ended (finished, failed, cancelled): what held it together while
-- it was queued work (its tasks' links to a batch job, the batch's member
-- list, its hash) now expires with its answer. ttl 0: kept.
local function lc_settle(job_id, task_ids, ttl)
    if ttl <= 0 then
        return
    end
    redis.call('EXPIRE', RQ.job_prefix .. job_id, ttl)
    redis.call('EXPIRE', LC.batch_prefix .. job_id, ttl)
    for _, task_id in ipairs(task_ids) do
        redis.call('EXPIRE', LC.task_job_prefix .. task_id, ttl)
        redis.call('EXPIRE', LC.holders_prefix .. task_id, ttl)
    end
end

-- Give every requested number a job, atomically: the job already computing or
-- computed it, or a new one. Redis runs a script alone, so two servers that
-- get the same number at the same instant cannot both make a job for it.
--
-- New jobs go to the back of their client's pending list, and the queues they
-- joined are fed at once (dispatch_lib.lua, which this script is appended to,
-- after lifecycle.lua: every state it writes goes through lc_move).
--
-- ARGV[1]: JSON, {"prefix": {...key prefixes...}, "queues_key": ..., "max_waiting": N,
--          "queues": {name: q (see dispatch_lib.lua), ...}, "per_worker": N,
--          "jobs": [{"queue": name, "client": name, "job_id": ..., "batch": bool,
--                    "ttl": s, "fields": [first ARGV index, count],
--                    "members": [["number", task_id, stale task_id or ""], ...]}, ...]}
-- ARGV[2..]: the new jobs' RQ hash fields and values (field, value, field, value, ...),
--            built by RQ in Python (binary: they cannot travel in the JSON).
-- Returns, per member in order: task_id, status, queue, payload
--   (status: "finished", "queued", "started", "busy" when its queue is full,
--    or "limited" when its client has max_queued jobs waiting for their turn;
--    "" where a field does not apply).
--
-- Keys are built here from their prefixes instead of being declared: the
-- numbers' jobs are only known once their index entries are read. RQ does not
-- run on Redis Cluster, so nothing here needs to either.

local spec = cjson.decode(ARGV[1])
local prefix = spec.prefix

-- The state of a task if its job is still useful to share: finished with its
-- result stored, waiting, or running. nil for a failed, stopped or expired one.
local function live_state(task_id)
    if redis.call('EXISTS', prefix.cancelled .. task_id) == 1 then
        return nil  -- stopped by a cancel (cancel.lua): a new request gets a new job
    end
    local payload = redis.call('GET', prefix.payload .. task_id)
    local job_id = redis.call('GET', prefix.task_job .. task_id) or task_id
    local f = redis.call('HMGET', RQ.job_prefix .. job_id, LC_F.state, RQ.origin, LC_F.client)
    local state, origin = f[1], f[2] or ''
    if payload then
        return {task_id, 'finished', origin, payload}
    end
    if state == LC.state.PENDING then
        return {task_id, 'queued', origin, ''}, {job_id = job_id, owner = f[3] or ''}
    end
    if state == LC.state.QUEUED then
        return {task_id, 'queued', origin, ''}
    end
    if state == LC.state.STARTED then
        return {task_id, 'started', origin, ''}
    end
    return nil
end

-- Jobs each client has waiting for its turn (CLIENT_MAX_QUEUED), counted once per script run.
local queued_by = {}
local function may_queue(client)
    if spec.max_queued <= 0 then
        return true
    end
    if queued_by[client] == nil then
        queued_by[client] = client_waiting(spec.queues, client)
    end
    return queued_by[client] < spec.max_queued
end

-- A request that joins a job still waiting for its maker's turn gets a turn
-- of its own (a ticket in its client's list): the job goes at the first of
-- their turns, and its other turns are dropped then (dispatch_lib.lua).
local function give_turn(pending, client, origin)
    local q = spec.queues[origin]
    -- A turn counts toward CLIENT_MAX_QUEUED like a job: past it, the request
    -- still shares the job, in its maker's turn.
    if not q or pending.owner == client or not may_queue(client) then
        return
    end
    local job_key = RQ.job_prefix .. pending.job_id
    local tickets = redis.call('HGET', job_key, LC_F.tickets) or ''
    if string.find('\n' .. tickets .. '\n', '\n' .. client .. '\n', 1, true) then
        return
    end
    redis.call('HSET', job_key, LC_F.tickets, tickets == '' and client or (tickets .. '\n' .. client))
    add_pending(q, client, pending.job_id)
    if queued_by[client] then
        queued_by[client] = queued_by[client] + 1
    end
end

-- HTTP requests hold a wait on their task (cancel.lua): their client's DELETE withdraws it.
local function hold(number, task_id, ttl)
    local holders = spec.holds[number]
    if holders then
        local key = prefix.holders .. task_id
        redis.call('SADD', key, unpack(holders))
        redis.call('EXPIRE', key, ttl)
    end
end

local waiting = {}
local function waiting_for(name)
    if waiting[name] == nil then
        waiting[name] = jobs_waiting(spec.queues[name])
    end
    return waiting[name]
end

-- A client's newest batch job of a queue takes later requests while it waits
-- (q.batch_size > 0): until it starts (its status, and the closed mark it sets
-- as it reads its members: jobs/events.py take_batch_members), and while it
-- has fewer than q.batch_size members. So under load a job carries every
-- request its client sent while it waited, and RQ's per-job bookkeeping is
-- paid once for all of them. {id, size} per open-batch key, or false.
local open = {}
local function open_batch(q, client)
    local key = q.open .. client
    if open[key] == nil then
        open[key] = false
        local id = redis.call('GET', key)
        local state = id and lc_state(RQ.job_prefix .. id)
        if id and redis.call('EXISTS', prefix.closed .. id) == 0
                and (state == LC.state.PENDING or state == LC.state.QUEUED) then
            open[key] = {id = id, size = redis.call('LLEN', prefix.batch .. id)}
        end
    end
    local batch = open[key]
    if batch and batch.size < q.batch_size then
        return batch
    end
    return nil
end

local answers = {}
for _, job in ipairs(spec.jobs) do
    local q = spec.queues[job.queue]
    local full = waiting_for(job.queue) >= spec.max_waiting
    local members = {}
    for _, member in ipairs(job.members) do
        local number, task_id, stale = member[1], member[2], member[3]
        local index_key = prefix.by_number .. number
        local current = redis.call('GET', index_key)
        local state, pending = nil, nil
        if current and current ~= stale then
            state, pending = live_state(current)
        end
        local joined = (not state) and q.batch_size > 0 and open_batch(q, job.client)
        local answer
        if state then
            answer = state
            if pending then
                give_turn(pending, job.client, state[3])
            end
        elseif joined then
            redis.call('SET', index_key, task_id, 'EX', job.ttl)
            redis.call('SET', prefix.task_job .. task_id, joined.id)
            redis.call('RPUSH', prefix.batch .. joined.id, number .. ':' .. task_id)
            joined.size = joined.size + 1
            answer = {task_id, 'queued', job.queue, ''}
        elseif full then
            answer = {task_id, 'busy', job.queue, ''}
        elseif #members == 0 and not may_queue(job.client) then
            answer = {task_id, 'limited', job.queue, ''}
        else
            redis.call('SET', index_key, task_id, 'EX', job.ttl)
            if job.batch then
                redis.call('SET', prefix.task_job .. task_id, job.job_id)
            end
            table.insert(members, number .. ':' .. task_id)
            answer = {task_id, 'queued', job.queue, ''}
        end
        if answer[2] ~= 'busy' and answer[2] ~= 'limited' then
            hold(number, answer[1], job.ttl)
        end
        table.insert(answers, answer)
    end
    if #members > 0 then
        if job.batch then
            local members_key = prefix.batch .. job.job_id
            -- Part of queued work, like the job's hash: no TTL, so eviction
            -- cannot take it; the job's end gives it one (lifecycle.lua lc_settle).
            redis.call('RPUSH', members_key, unpack(members))
            if q.batch_size > 0 then
                redis.call('SET', q.open .. job.client, job.job_id, 'EX', job.ttl)
                open[q.open .. job.client] = {id = job.job_id, size = #members}
            end
        end
        local first, count = job.fields[1], job.fields[2]
        local job_key = RQ.job_prefix .. job.job_id
        redis.call('HSET', job_key, unpack(ARGV, first, first + count - 1))
        lc_move(job_key, LC.state.PENDING)
        redis.call('HSET', job_key, LC_F.client, job.client)
        redis.call('SADD', spec.queues_key, q.queue_key)
        add_pending(q, job.client, job.job_id)
        defer(q, job.job_id)
        waiting[job.queue] = waiting[job.queue] + 1
        if queued_by[job.client] then
            queued_by[job.client] = queued_by[job.client] + 1
        end
    end
end

for name, _ in pairs(waiting) do
    dispatch(spec.queues[name], spec.per_worker)
end

local flat = {}
for _, answer in ipairs(answers) do
    for _, value in ipairs(answer) do
        table.insert(flat, value)
    end
end
return flat

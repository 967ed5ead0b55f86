-- Cancel one task for one server's connection, in one atomic step.
--
-- ARGV[1]: JSON {"task_id", "server", "others_here" (bool: another connection
--   of this server waits), "ttl" (s, of the cancelled mark), "prefix": {payload,
--   task_job, job, batch, cancelled, waits}, "servers_key", "queue_keys": {name: key}}
-- Returns {outcome, job_id}: outcome "unknown", "ended", "continues",
-- "stopped" (taken off its queue), or "stop" (running: the caller tells its
-- worker to stop it, with RQ's stop-job command).
local spec = cjson.decode(ARGV[1])
local prefix = spec.prefix
local task_id = spec.task_id

if redis.call('EXISTS', prefix.payload .. task_id) == 1 or redis.call('EXISTS', prefix.cancelled .. task_id) == 1 then
    return {'ended', ''}
end
local job_id = redis.call('GET', prefix.task_job .. task_id) or task_id
local job_key = prefix.job .. job_id
local f = redis.call('HMGET', job_key, 'status', 'origin')
local status, origin = f[1], f[2]
if not status then
    return {'unknown', ''}
end
if status ~= 'queued' and status ~= 'started' then
    return {'ended', ''}
end

-- Does anyone else wait? Here (the caller knows), or on another live server.
if spec.others_here then
    return {'continues', ''}
end
for _, server in ipairs(redis.call('SMEMBERS', spec.servers_key)) do
    local waits = prefix.waits .. server
    if server ~= spec.server then
        if redis.call('EXISTS', waits) == 0 then
            redis.call('SREM', spec.servers_key, server)  -- it stopped refreshing: gone
        elseif redis.call('SISMEMBER', waits, task_id) == 1 then
            return {'continues', ''}
        end
    end
end

local batch = job_id ~= task_id
if batch then
    local members_key = prefix.batch .. job_id
    if status == 'started' then
        -- The batch computes its other members too, in milliseconds.
        if redis.call('LLEN', members_key) > 1 then
            return {'continues', ''}
        end
    else
        for _, entry in ipairs(redis.call('LRANGE', members_key, 0, -1)) do
            if string.sub(entry, -#task_id - 1) == ':' .. task_id then
                redis.call('LREM', members_key, 0, entry)
            end
        end
        redis.call('SET', prefix.cancelled .. task_id, '1', 'EX', spec.ttl)
        if redis.call('LLEN', members_key) > 0 then
            return {'stopped', job_id}  -- the batch runs without it
        end
    end
end

redis.call('SET', prefix.cancelled .. task_id, '1', 'EX', spec.ttl)
if status == 'started' then
    return {'stop', job_id}
end
-- Queued: in its RQ queue (short), or in a pending list, where the
-- dispatcher drops it when its turn comes (dispatch_lib.lua).
redis.call('HSET', job_key, 'status', 'canceled')
local queue_key = spec.queue_keys[origin or '']
if queue_key then
    redis.call('LREM', queue_key, 0, job_id)
end
return {'stopped', job_id}

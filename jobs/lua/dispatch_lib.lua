-- Fair scheduling: moving jobs from the clients' pending lists into an RQ queue.
--
-- Each client has one list of waiting jobs per queue (keys.pending), and each
-- queue a ring of the clients that have some (keys.pending_clients). The RQ
-- queue is kept short: about QUEUED_JOBS_PER_WORKER jobs per worker serving
-- it. Whenever it has room, the client at the head of the ring gives one job
-- and goes to the back. So a light client's job waits behind about one job per
-- busy client, plus the few already in the RQ queue, however long the busy
-- clients' backlogs are. Workers stay stock RQ: they only ever see the RQ queue.
--
-- q: {queue_key, pending (prefix of the clients' lists), clients (the ring),
--     count (turns waiting in all lists), workers (RQ's set of workers on the queue),
--     deferred (RQ's deferred registry of the queue: the jobs waiting for a turn)}
-- The clients whose pending lists hold a turn of the job: its maker, and
-- each other client that asked for it while it waited (a ticket).
local function turn_holders(job_key)
    local f = redis.call('HMGET', job_key, LC_F.client, LC_F.tickets)
    local holders = {f[1] or ''}
    for client in string.gmatch(f[2] or '', '[^\n]+') do
        table.insert(holders, client)
    end
    return holders
end

-- Take a job's turns out of every holder's list but `keep`'s, so no list
-- keeps a dead entry (the job was dispatched or cancelled).
local function drop_turns(q, job_key, job_id, keep)
    for _, client in ipairs(turn_holders(job_key)) do
        if client ~= keep and redis.call('LREM', q.pending .. client, 0, job_id) > 0 then
            redis.call('DECR', q.count)
            if redis.call('LLEN', q.pending .. client) == 0 then
                redis.call('LREM', q.clients, 0, client)
            end
        end
    end
end

-- Entries looked at per dispatch call at most, moved or dropped: a script
-- must never walk an unbounded run of them.
local DISPATCH_BUDGET = 1000

local function dispatch(q, per_worker)
    local target = math.max(1, redis.call('SCARD', q.workers)) * per_worker
    local room = target - redis.call('LLEN', q.queue_key)
    local moved = 0
    -- Each turn takes a job off a list or drops a client with none left, so
    -- the loop ends: the lists and the ring are finite.
    local budget = DISPATCH_BUDGET
    while moved < room and budget > 0 do
        budget = budget - 1
        local client = redis.call('LPOP', q.clients)
        if not client then
            break
        end
        local pending_key = q.pending .. client
        local job_id = redis.call('LPOP', pending_key)
        if job_id then
            redis.call('DECR', q.count)
            -- Only a pending job moves (one cancelled meanwhile, or gone, is dropped),
            -- and its other turns go with it.
            local job_key = RQ.job_prefix .. job_id
            if lc_state(job_key) == LC.state.PENDING and lc_move(job_key, LC.state.QUEUED) then
                drop_turns(q, job_key, job_id, client)
                redis.call('ZREM', q.deferred, job_id)
                redis.call('RPUSH', q.queue_key, job_id)
                moved = moved + 1
            end
        end
        if redis.call('LLEN', pending_key) > 0 then
            redis.call('RPUSH', q.clients, client)
        end
    end
    return moved
end

-- Jobs waiting for a queue: in the RQ queue, and waiting for their turn (each
-- listed once in RQ's deferred registry, however many turns it holds).
local function jobs_waiting(q)
    return redis.call('LLEN', q.queue_key) + redis.call('ZCARD', q.deferred)
end

-- A new job waits for its turn: listed in RQ's deferred registry, which
-- rq-dashboard shows under its queue, until the dispatcher queues it.
local function defer(q, job_id)
    local now = redis.call('TIME')
    redis.call('ZADD', q.deferred, tonumber(now[1]) + tonumber(now[2]) / 1e6, job_id)
end

-- Jobs a client has waiting for their turn, in every queue.
local function client_waiting(queues, client)
    local n = 0
    for _, q in pairs(queues) do
        n = n + redis.call('LLEN', q.pending .. client)
    end
    return n
end

-- Add a job to the back of its client's list; a client with no list yet joins the ring.
local function add_pending(q, client, job_id)
    if redis.call('RPUSH', q.pending .. client, job_id) == 1 then
        redis.call('RPUSH', q.clients, client)
    end
    redis.call('INCR', q.count)
end

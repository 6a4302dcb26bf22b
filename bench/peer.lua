-- wrk script of bench/peer.sh: POSTs a quota check whose user cycles over
-- a population, in the body format of the server under test, and prints
-- the run as one line of JSON. Arguments after --: format (llmusage or
-- ratelimit) and users.
local format, users, n = "llmusage", 10000, 0

function init(args)
	format = args[1] or format
	users = tonumber(args[2]) or users
	-- A random start, so that two runs do not hit the same users first.
	math.randomseed(os.time())
	n = math.random(users) - 1
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
	n = (n + 1) % users
	local body
	if format == "ratelimit" then
		body = string.format('{"domain":"bench","descriptors":[{"entries":[{"key":"user_id","value":"user-%d"}]}]}', n)
	else
		body = string.format('{"user_id":"user-%d","model":"gpt-4o-mini","provider":"openai","tokens":500}', n)
	end
	return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
	local e = summary.errors
	io.write(string.format('{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"non_2xx":%d,"socket_errors":%d}\n',
		summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
		e.status, e.connect + e.read + e.write + e.timeout))
end

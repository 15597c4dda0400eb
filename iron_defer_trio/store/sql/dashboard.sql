-- name: queue_throughput
-- Tasks completed per queue in each time bucket of the recent past, for the dashboard's
-- throughput chart. Bucket 0 ends now, bucket 1 the bucket before it, and so on; buckets
-- without a completion are absent (the caller fills them with zero). Reads the retention
-- index (status, finished_at): only the window's finished rows are visited.
-- params: $1 window seconds float8, $2 bucket seconds float8
SELECT queue,
       floor(extract(epoch FROM now() - finished_at) / $2::float8)::int AS ago,
       count(*) AS completed
FROM iron_defer.tasks
WHERE status = 'completed'
  AND finished_at IS NOT NULL
  AND finished_at > now() - make_interval(secs => $1::float8)
GROUP BY 1, 2
ORDER BY 1, 2;

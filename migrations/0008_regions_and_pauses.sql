-- 0008: regions (worker pinning) and paused queues.

-- A task may be pinned to a region: only engines configured with that worker.region claim
-- it. NULL: unpinned, claimed by any engine. Labels are 1-63 lowercase letters, digits and
-- hyphens, starting with a letter or digit (they end up in metrics labels and URLs).
ALTER TABLE iron_defer.tasks
    ADD COLUMN region text,
    ADD CONSTRAINT tasks_region_label CHECK (region ~ '^[a-z0-9][a-z0-9-]{0,62}$');

-- The claim index gains the region, as an expression that is never NULL, so that both of a
-- claim's scans (unpinned tasks, and the engine's own region's) are an equality prefix and
-- read in claim order without a sort, however many tasks other regions have waiting.
-- Rebuilding it blocks writes to the table while it runs (seconds per million pending rows).
DROP INDEX iron_defer.tasks_claim_idx;
CREATE INDEX tasks_claim_idx
    ON iron_defer.tasks (queue, (coalesce(region, '')), priority DESC, scheduled_at, id)
    WHERE status = 'pending';

-- Paused queues: no engine claims from a queue listed here (it still accepts tasks, and
-- running tasks finish). In the database, so a pause holds on every node and across restarts.
CREATE TABLE iron_defer.queue_pauses (
    queue text PRIMARY KEY
        CONSTRAINT queue_pauses_queue_name CHECK (queue ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'),
    paused_at timestamptz NOT NULL DEFAULT now()
);

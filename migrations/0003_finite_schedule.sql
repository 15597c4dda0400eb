-- 0003: scheduled_at is always a finite instant. The driver maps infinity (and the calendar's
-- edges) to values no worker can compare; the application refuses them before they get here,
-- and this constraint makes sure no other writer can store one either.
ALTER TABLE iron_defer.tasks
    ADD CONSTRAINT tasks_scheduled_at_finite CHECK (isfinite(scheduled_at)) NOT VALID;

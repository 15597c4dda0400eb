-- name: lock
-- Serialise migrations across processes for the rest of the transaction.
-- params: none
SELECT pg_advisory_xact_lock(7238519402211133101);

-- name: bootstrap
-- Create the schema and the ledger of applied migrations if this database has neither.
-- params: none
CREATE SCHEMA IF NOT EXISTS iron_defer;
CREATE TABLE IF NOT EXISTS iron_defer.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: applied
-- The migrations already applied, oldest first.
-- params: none
SELECT version, name, checksum FROM iron_defer.schema_migrations ORDER BY version;

-- name: record
-- Remember that a migration ran, with the checksum of its text.
-- params: $1 version, $2 name, $3 checksum (sha256 hex)
INSERT INTO iron_defer.schema_migrations (version, name, checksum) VALUES ($1, $2, $3);

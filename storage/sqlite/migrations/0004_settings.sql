-- SPEC §5.3 settings changed at run time (matching mode, hide_plus_in_from); they
-- override the config file's values and survive restarts.
CREATE TABLE settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL
);

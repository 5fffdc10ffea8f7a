-- R-R8: the host's processes, so routes naming one that no longer exists can be flagged.
CREATE TABLE processes (
    name       TEXT PRIMARY KEY,
    updated_at REAL NOT NULL
);

-- R-C5: who changed which connector or route, when, and what (old -> new).
-- entity: 'connector:<name>' or 'route:<id>'; changes: JSON {field: [old, new]},
-- never a password value (recorded as "***").
CREATE TABLE activity (
    id      INTEGER PRIMARY KEY,
    entity  TEXT    NOT NULL,
    action  TEXT    NOT NULL CHECK (action IN ('create', 'update', 'delete', 'enable',
                                               'disable', 'move')),
    actor   TEXT    NOT NULL,
    at      REAL    NOT NULL,
    changes TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX activity_by_entity ON activity(entity, id);

-- R-C1: a connector's credentials. The password is kept as given (a mailbox login
-- needs it back); the API only ever says whether one is set.
ALTER TABLE connectors ADD COLUMN username TEXT;
ALTER TABLE connectors ADD COLUMN password TEXT;

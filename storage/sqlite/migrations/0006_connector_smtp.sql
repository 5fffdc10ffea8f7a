-- R-C1 outgoing settings of a connector, used by R-O1: mail From one of its addresses
-- leaves through its own SMTP server instead of the system default gateway.
ALTER TABLE connectors ADD COLUMN smtp_host TEXT NOT NULL DEFAULT '';
ALTER TABLE connectors ADD COLUMN smtp_port INTEGER NOT NULL DEFAULT 587;
ALTER TABLE connectors ADD COLUMN smtp_tls TEXT NOT NULL DEFAULT 'starttls';

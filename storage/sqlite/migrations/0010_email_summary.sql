-- The headers the API shows of a copy (gateway/mail_summary.py), made when the copy is
-- prepared and stored with its decision, so reading a copy never parses it. NULL for
-- copies decided by an earlier release, and for copies still waiting.
ALTER TABLE emails ADD COLUMN summary TEXT;

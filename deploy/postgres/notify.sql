-- tenant-edge: tell the edges about tenant domain changes the moment they happen.
--
-- Install once in the application's database (psql "$DATABASE_URL" -f notify.sql), or put it
-- in a Rails migration (execute File.read(...)). Safe to run again: it replaces itself.
--
-- Whenever a company is inserted or deleted, or its dns_names or active column changes, every
-- affected name (old and new) is sent on the channel tenant_edge_domains, one NOTIFY per name.
-- tenant-edge LISTENs on that channel (allow.database.notify_channel) and drops its cached
-- decision for each name: a deactivated company's domains are refused on their next handshake,
-- and a newly added domain is allowed (and its certificate ordered in the background) at once.
-- Without this trigger, tenant-edge still follows changes after allow.allowed_ttl/denied_ttl.
--
-- NOTIFY is transactional: nothing is sent for a rolled-back change.

CREATE OR REPLACE FUNCTION tenant_edge_notify_domains() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  changed text[] := '{}';
  name text;
BEGIN
  IF TG_OP = 'UPDATE'
     AND OLD.dns_names IS NOT DISTINCT FROM NEW.dns_names
     AND OLD.active IS NOT DISTINCT FROM NEW.active THEN
    RETURN NULL;
  END IF;
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    changed := changed || OLD.dns_names::text[];
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    changed := changed || NEW.dns_names::text[];
  END IF;
  FOR name IN SELECT DISTINCT lower(n) FROM unnest(changed) AS n LOOP
    PERFORM pg_notify('tenant_edge_domains', name);
  END LOOP;
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS tenant_edge_notify_domains ON companies;
CREATE TRIGGER tenant_edge_notify_domains
  AFTER INSERT OR DELETE OR UPDATE OF dns_names, active ON companies
  FOR EACH ROW EXECUTE FUNCTION tenant_edge_notify_domains();

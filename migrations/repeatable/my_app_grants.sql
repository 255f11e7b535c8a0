-- Privileges of the my_app group; both members inherit them.  Idempotent.
GRANT USAGE, CREATE ON SCHEMA my_schema TO my_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA my_schema TO my_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA my_schema TO my_app;

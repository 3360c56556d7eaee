"""Storage: the schema, engines, bulk writes, queries and migrations."""

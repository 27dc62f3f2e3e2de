"""The metadata store: schema, migrations and SQL adapters of every store contract."""

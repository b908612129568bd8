"""The transport: records, links and endpoints. It knows nothing about actors (the runtime in `actors._runtime`
sits on top of it); import-linter's contracts in pyproject.toml keep it so."""

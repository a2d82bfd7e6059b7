"""The rules: rules/ loaded and checked (rulebook), evaluated by durable-rules (durable_rules), and
listed for a committee (catalogue)."""

"""Money: posting rules (pure), the ledger with holds, and (later) its durable stores."""

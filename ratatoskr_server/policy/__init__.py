"""Pure decisions around provider calls (parameters, presets, and later privacy, context, budget); no wire formats."""

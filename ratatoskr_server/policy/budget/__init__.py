"""Cost budgets: calendar windows, prices, and the stage that reserves before and settles after."""

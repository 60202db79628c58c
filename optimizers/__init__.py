"""dse.optimizers: generic search over unconstrained arrays (knows neither chips nor models)."""

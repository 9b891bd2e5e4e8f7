"""Training strategies: LightningModules sharing one base (:mod:`agnews.strategies.base`)."""

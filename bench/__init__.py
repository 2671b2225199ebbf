"""The experiment bench, apart from the product: the built-in world (catalog of real PNGs, users with
hidden tastes and trends, logged clicks), the closed-loop simulator, the offline re-ranking trade-off and
the embedding diagnostics. It may import data, towers and serving; the product never imports it."""

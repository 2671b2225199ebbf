"""The simulator's settings (:class:`SimulationConfig`) and the arms it can run (:data:`ARMS`, with what the
two-tower arms pass to the serving path in :data:`RERANK`); free of TensorFlow, so the CLI shows the defaults
without loading the simulator (:mod:`vistaste.bench.simulate`)."""
from __future__ import annotations

import dataclasses

from vistaste.serving.rerank_stages import DEFAULT_TREND_WEIGHT
from vistaste.towers.config import CANDIDATES

ARMS = ("most-popular", "pretrained-kNN", "two-tower", "two-tower+MMR", "two-tower+DPP", "two-tower+DPP+trend", "two-tower+adaptive",
        "oracle")
# Two-tower arms: what each passes to the serving path (SlateServer.recommend) besides the user and k. A
# trade_off of None is the method's serving default; SimulationConfig.trade_off overrides it for every arm.
RERANK: dict[str, dict] = {"two-tower": {"method": "none"}, "two-tower+MMR": {"method": "mmr"}, "two-tower+DPP": {"method": "dpp"},
                           "two-tower+DPP+trend": {"method": "dpp", "trend": True}, "two-tower+adaptive": {"method": "adaptive"}}



@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    warmup_days: int = 14  # the world's first days of logs are every arm's starting log
    days: int = 14  # simulated days
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = ARMS
    slate_size: int = 12
    candidates: int = CANDIDATES
    initial_epochs: int = 8
    daily_epochs: int = 2
    trade_off: float | None = None  # None: each method's default (see rerank.DEFAULT_TRADE_OFF)
    trend_weight: float = DEFAULT_TREND_WEIGHT  # the "+trend" arm's boost (the other arms have none)
    # The two-tower arms' collaborative term, as `train` adds it, at a given beta (the simulator has no validation
    # slice to choose it on): 0.25 is what `train` chose on the default world's validation (demo, seed 0). 0: towers alone.
    collaborative_beta: float = 0.25
    # More two-tower arms: name -> options for the serving path (as RERANK's values), e.g.
    # {"two-tower+MMR0.7": {"method": "mmr", "trade_off": 0.7}}: settings compared on validation seeds.
    variants: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()
    activity_a: float = 2.0  # users' daily activity ~ Beta(a, b)
    activity_b: float = 3.0

    def __post_init__(self):
        unknown = set(self.arms) - set(ARMS) - set(self.serving_options())
        if unknown:
            raise ValueError(f"unknown arms {sorted(unknown)}; choose from {ARMS} or name them in variants")
        if "oracle" not in self.arms:
            raise ValueError("the oracle arm is required: regret is measured against it")
        if self.days <= 0 or self.warmup_days <= 0:
            raise ValueError(f"days and warmup_days must be positive, got {self.days} and {self.warmup_days}")

    @classmethod
    def with_variants(cls, variants: dict[str, dict], **config) -> "SimulationConfig":
        """A config whose ``arms`` may name the extra two-tower arms in ``variants`` (name -> serving options)."""
        return cls(variants=tuple((name, tuple(sorted(options.items()))) for name, options in variants.items()), **config)

    def serving_options(self) -> dict[str, dict]:
        """Two-tower arm name -> keyword arguments for :meth:`SlateServer.recommend` (method, trade_off,
        trend_weight), RERANK's and the variants'."""
        out = {}
        for name, options in [*RERANK.items(), *((n, dict(o)) for n, o in self.variants)]:
            options = dict(options)
            trend = options.pop("trend", False)
            if self.trade_off is not None:
                options["trade_off"] = self.trade_off
            options.setdefault("trend_weight", self.trend_weight if trend else 0.0)
            out[name] = {"trade_off": None, **options}
        return out

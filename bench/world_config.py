"""The built-in world's settings: the attribute vocabularies its pictures and tastes are drawn from, the
calendar start, and :class:`WorldConfig` (size, click model weights and the optional user behaviours with
their default strengths). :mod:`vistaste.bench.truth` draws a hidden truth from them.
"""
from __future__ import annotations

import dataclasses

import pandas as pd

PALETTES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "sunset": ((253, 186, 116), (239, 83, 80), (123, 31, 162)),
    "ocean": ((224, 247, 250), (0, 131, 143), (26, 35, 126)),
    "forest": ((232, 245, 233), (56, 142, 60), (62, 39, 35)),
    "pastel": ((255, 240, 245), (179, 157, 219), (129, 212, 250)),
    "mono": ((245, 245, 245), (97, 97, 97), (20, 20, 20)),
    "neon": ((20, 20, 30), (0, 230, 118), (255, 23, 200)),
    "earth": ((239, 235, 220), (161, 136, 127), (191, 110, 40)),
    "berry": ((252, 228, 236), (194, 24, 91), (74, 20, 140)),
}
PATTERNS = ("stripes", "dots", "checks", "florals", "gradient", "zigzag")
STYLES = ("fine", "medium", "bold")
SHAPES = ("circle", "square", "triangle", "star", "diamond")
LAYOUTS = ("center", "left", "right", "top")
PALETTE_NAMES = tuple(PALETTES)
STYLE_PERIOD = {"fine": 12.0, "medium": 22.0, "bold": 40.0}  # pattern period in pixels at 224x224

START = pd.Timestamp("2026-01-01", tz="UTC")
# A session starts at a uniform second of its day below this, so its events (a second per slate position,
# a click 3 s after its impression) end before midnight: in the logged world and in the simulator alike.
SESSION_START_LIMIT_S = 86_000

# The behaviours' default strengths (issue 13; WorldConfig's defaults since). The *shapes* come from the literature: satiation that
# grows with consumption and decays geometrically, penalising the reward (Leqi et al., "Rebounding bandits
# for modeling satiation effects", NeurIPS 2021); interest that moves a share of the remaining distance per
# consumed item (RecSim's interest evolution, Ie et al. 2019: alpha_y_intercept 0.3, hence trend_pull_step);
# a top-down cascade (Craswell et al., WSDM 2008; RecSim's attention_prob 0.9 per position). The
# *magnitudes* are our assumptions, not measurements: one view and click of a taste leave exp(-0.2 * 1.1) =
# 80% of its match and that loss halves every 3 days; a slate of one taste is left after 3 items on average
# (1 + 1 + 1/2 + 1/4 + ...), one without repeated tastes is read to the end; a click at a trend's peak is
# worth 0.3 logits to that user, halving every 4 days; a user whose sessions bring no clicks comes half as
# often as a satisfied one. With them on, the logging policy's CTR stays at a few percent (measured:
# 3.9% against 4.6% without, 1,500 items, 800 users, 42 days).
BEHAVIOUR_STRENGTHS: dict[str, float] = {"satiation": 0.2, "boredom": 0.5, "trend_following": 1.0, "return_sensitivity": 0.5}
BEHAVIOUR_FIELDS = ("satiation", "satiation_view_weight", "satiation_half_life", "boredom", "trend_following", "trend_pull_step",
                    "trend_pull_half_life", "return_sensitivity", "engagement_half_life")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Size and behaviour of a generated world (the defaults give ~110k events, CTR ~4%).

    Users tire of tastes, leave monotonous slates, follow trends and come back when satisfied
    (BEHAVIOUR_STRENGTHS); :meth:`without_behaviours` gives the world before them (issue 13), in which
    a user tires only of re-clicking the very same item."""

    items: int = 2000
    users: int = 1000
    days: int = 30
    seed: int = 0
    images: bool = True
    image_size: int = 224
    slate_size: int = 16
    launch_share: float = 0.75  # share of items present on day 0; the rest arrive over time (cold start)
    base_logit: float = -4.0
    palette_weight: float = 1.0
    pattern_weight: float = 1.2
    combo_weight: float = 2.6  # a taste is a palette *and* a pattern together: the match is worth more than its parts
    style_weight: float = 0.6
    trend_amplitude: float = 1.6
    position_decay: float = 0.5  # position bias = 1 / (1 + position) ** position_decay
    fatigue: float = 0.15  # click probability multiplier for an item the user already clicked
    save_rate: float = 0.15  # share of clicks that are followed by a save
    # Behaviours (issue 13), carried from day to day by :class:`~vistaste.bench.users.UserState`, on by default at
    # BEHAVIOUR_STRENGTHS. Each is off at 0, so worlds and figures made before them reproduce exactly
    # (:meth:`without_behaviours`).
    # Satiation: a taste's affinity is multiplied by exp(-satiation * s), where s counts the user's recent
    # clicks (1 each) and views (satiation_view_weight each) of items of that taste, and halves every
    # satiation_half_life days (rebounding bandits' s <- gamma * (s + pulls), Leqi et al. 2021).
    satiation: float = BEHAVIOUR_STRENGTHS["satiation"]
    satiation_view_weight: float = 0.1
    satiation_half_life: float = 3.0
    # Slate boredom: users scan top-down (a cascade) and after each item leave with probability
    # boredom * redundancy, redundancy = the share of the items above it with its taste (palette and
    # pattern). Logged impressions are the items they looked at.
    boredom: float = BEHAVIOUR_STRENGTHS["boredom"]
    # Trend following: a click on an item with a trend's attribute pulls the user toward it, closing
    # trend_pull_step (times the trend's current strength, 0..1) of the remaining distance (RecSim's
    # interest-evolution update); at full pull the attribute is worth trend_following logits to them.
    trend_following: float = BEHAVIOUR_STRENGTHS["trend_following"]
    trend_pull_step: float = 0.3
    trend_pull_half_life: float = 4.0
    # Return: a user visits on a day they would with probability 1 - return_sensitivity * (1 - engagement);
    # engagement is an exponential average (half-life engagement_half_life days, over days they came) of
    # their sessions' satisfaction 1 - exp(-clicks); new users start fully engaged.
    return_sensitivity: float = BEHAVIOUR_STRENGTHS["return_sensitivity"]
    engagement_half_life: float = 3.0

    def __post_init__(self):
        for name in ("items", "users", "days", "slate_size", "image_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("satiation", "satiation_view_weight", "trend_following"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("boredom", "trend_pull_step", "return_sensitivity"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("satiation_half_life", "trend_pull_half_life", "engagement_half_life"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive (days), got {getattr(self, name)}")

    @classmethod
    def with_behaviours(cls, satiation: float | None = None, boredom: float | None = None, trend_following: float | None = None,
                        return_sensitivity: float | None = None, **config) -> "WorldConfig":
        """A world whose users tire of tastes, get bored of monotonous slates, follow trends and come back
        when satisfied: BEHAVIOUR_STRENGTHS unless a strength is given (0 turns one off); ``config`` sets
        any other field. Example: ``WorldConfig.with_behaviours(boredom=0.0, users=200, images=False)``."""
        given = {"satiation": satiation, "boredom": boredom, "trend_following": trend_following,
                 "return_sensitivity": return_sensitivity}
        return cls(**{**BEHAVIOUR_STRENGTHS, **{k: v for k, v in given.items() if v is not None}, **config})

    @classmethod
    def without_behaviours(cls, **config) -> "WorldConfig":
        """The world before issue 13: no satiation, slate boredom, trend following or return decision;
        ``config`` sets any other field. Example: ``WorldConfig.without_behaviours(users=200, images=False)``."""
        return cls(**{**dict.fromkeys(BEHAVIOUR_STRENGTHS, 0.0), **config})

    @property
    def behaviours(self) -> dict[str, float]:
        """The four behaviour strengths (all 0: the world before issue 13, :meth:`without_behaviours`)."""
        return {name: getattr(self, name) for name in BEHAVIOUR_STRENGTHS}

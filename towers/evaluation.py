"""`vistaste evaluate`: the held-out period, the models beside the baselines practitioners use, on
one stated protocol.

Protocol (printed in every report): the split rule (:mod:`vistaste.data.split`: global temporal split
by fraction, days or start time, or leave-last-N per user); the users scored and their histories
(:mod:`vistaste.towers.slices`: warm users, new users given their first clicks, cold items); the
candidates: every item that exists by the end of the period minus what the seen-item policy hides
(default: everything the user consumed before the cut); ties broken by a fixed random permutation.

Methods, each on the same split, users and candidates: random; most-popular over the whole training
period and over its last days (named); item-kNN on co-occurrence; implicit's ALS; content-kNN on the
item vectors (off-the-shelf visual similarity on images); a plain TFRS id two-tower; the trained
vistaste model(s); on the built-in world, an oracle ranking by true click probability (passed in by the
bench: :func:`vistaste.bench.world.oracle_scorers`; this module knows nothing of the world). Every method's
settings are chosen on the validation slice (train -> validation), then it is refit on everything
before the test cut, like our own model.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from vistaste.data.io import atomic_path, write_json
from vistaste.data.seen import SeenPolicy
from vistaste.data.split import SplitSpec, TimeSplit
from vistaste.data.trends import RECENT_POPULARITY_DAYS
from vistaste.towers import baselines as _baselines
from vistaste.towers import metrics, trend_boost
from vistaste.towers.config import CANDIDATES
from vistaste.towers.features import ItemTable, positives
from vistaste.towers.slices import NEW_USER_HISTORY, Slice, available_items, build_slices, positive_rows, validation_split  # noqa: F401
from vistaste.towers.training import TrainConfig, TrainedTwoTower, prepare

KS = (10, 50, 100)
SELECTION_METRIC = "ndcg@10"  # what baselines' settings are chosen by, on validation
SELECTION_K = 10  # its cut-off (selection_value computes it alone: choosing tries ~150 rankings)

Scorer = Callable[[Slice], np.ndarray]  # -> scores [users, items]


def baseline_methods(include_two_tower: bool = True) -> dict[str, Callable[..., object]]:
    """Report name -> factory(**params) of every baseline (the id two-tower trains; skip it for speed)."""
    methods = {
        "most-popular": lambda **p: _baselines.MostPopular(**p),
        f"most-popular (last {RECENT_POPULARITY_DAYS:g} days)": lambda **p: _baselines.MostPopular(window_days=RECENT_POPULARITY_DAYS, **p),
        "item-kNN": lambda **p: _baselines.ItemKNN(**p),
        "ALS (implicit)": lambda **p: _baselines.ALS(**p),
        "content-kNN": lambda **p: _baselines.ContentKNN(**p),
    }
    if include_two_tower:
        methods["id two-tower (TFRS)"] = lambda **p: _baselines.IdTwoTower(**p)
    return methods


# Baselines also reported with a trend boost chosen on validation the way the model's is, so the model's
# boost is not what separates it from them.
BOOSTED_BASELINES = ("ALS (implicit)",)

GRID_KEYS = {"item-kNN": "item-knn", "ALS (implicit)": "als", "id two-tower (TFRS)": "id-two-tower"}


def score_slices(scorer: Scorer, slices: list[Slice], available: np.ndarray, ks=KS, tie_ranks=None) -> dict[str, np.ndarray]:
    """{slice name: ranked top-max(ks) rows} after the seen-item exclusion."""
    return {s.name: metrics.top_k(metrics.exclude(scorer(s), s.exclude, available), max(ks), tie_ranks) for s in slices}


def selection_value(top: np.ndarray, s: Slice) -> float:
    """``SELECTION_METRIC`` of ranked ``top`` rows on slice ``s`` (what :func:`ranking_metrics` reports under that name)."""
    return metrics.ndcg(top, s.relevant, SELECTION_K)


def ranking_metrics(top: np.ndarray, s: Slice, n_available: int, ks=KS) -> dict[str, float]:
    row = {f"recall@{k}": metrics.recall(top, s.relevant, k) for k in ks}
    row.update({f"ndcg@{k}": metrics.ndcg(top, s.relevant, k) for k in ks})
    row["mrr"] = metrics.mrr(top, s.relevant)
    row["coverage@10"] = metrics.coverage(top, n_available, 10)
    row["coverage@50"] = metrics.coverage(top, n_available, 50)
    return row


def grid_fits(factory, grid: list[dict], positives: pd.DataFrame, table: ItemTable, seed: int):
    """(params, fitted) for each setting of ``grid``. Where the estimator takes ``warm_start`` (scikit-learn's
    meaning), settings that differ only in ``epochs`` are one fit continued, fewest epochs first: the
    estimator yielded is then refitted in place, so score it before taking the next one."""
    if "warm_start" not in factory().get_params():
        for params in grid:
            yield params, factory(**params, random_state=seed).fit(positives, table)
        return
    groups: dict[tuple, list[dict]] = {}
    for params in grid:
        groups.setdefault(tuple(sorted((k, v) for k, v in params.items() if k != "epochs")), []).append(params)
    for settings in groups.values():
        method = factory(random_state=seed, warm_start=True)
        for params in sorted(settings, key=lambda p: p.get("epochs", 0)):
            yield params, method.set_params(**params).fit(positives, table)


def fit_baselines(split: TimeSplit, table: ItemTable, policy: SeenPolicy, history_length: int, seed: int = 0,
                  include_two_tower: bool = True, log=print) -> tuple[dict[str, object], dict[str, dict]]:
    """Choose each baseline's settings on validation (by ``SELECTION_METRIC``), refit it on everything
    before the test cut. Returns ({name: fitted baseline}, {name: {"params", "validation"}})."""
    val_split = validation_split(split)
    val_slices = [s for s in build_slices(val_split, table, history_length, policy) if s.name == "warm users"]
    val_available = available_items(table, val_split.end)
    train_pos = positive_rows(split.train, table)
    before_pos = positive_rows(pd.concat([split.train, split.validation]), table)
    tie_ranks = metrics.tie_break(len(table), seed)
    fitted, chosen = {}, {}
    for name, factory in baseline_methods(include_two_tower).items():
        grid = _baselines.PARAM_GRIDS.get(GRID_KEYS.get(name, ""), [{}])
        best, best_value, scores = {}, -1.0, []
        if len(grid) > 1 and val_slices:
            for params, method in grid_fits(factory, grid, train_pos, table, seed):
                s = val_slices[0]
                top = score_slices(lambda sl: method.score(sl.user_ids, sl.histories), [s], val_available, (SELECTION_K,),
                                   tie_ranks)[s.name]
                value = selection_value(top, s)
                scores.append({**params, SELECTION_METRIC: value})
                if value > best_value:
                    best, best_value = params, value
        fitted[name] = factory(**best, random_state=seed).fit(before_pos, table)
        chosen[name] = {"params": best, "validation": scores}
        if len(grid) > 1:
            log(f"  {name}: chose {best} on validation ({SELECTION_METRIC} {best_value:.4f})")
        if name in BOOSTED_BASELINES and val_slices:
            s = val_slices[0]
            method = factory(**best, random_state=seed).fit(train_pos, table)

            def value(ranked, s=s):
                return selection_value(metrics.top_k(ranked, SELECTION_K, tie_ranks), s)

            # Within the same breadth floor the two-tower's boost is chosen under (TrainConfig.min_breadth).
            popularity = np.bincount(train_pos["row"].to_numpy(), minlength=len(table))
            floor = trend_boost.breadth_floor(s, val_available, popularity, TrainConfig.min_breadth)
            setting, _ = trend_boost.choose(method.score(s.user_ids, s.histories), s, val_available, positives(split.train), s.cuts, table,
                                            value, allowed=floor)
            chosen[name]["trend"] = setting.to_dict()
            log(f"  {name} + trend boost: chose {setting.describe()}")
    return fitted, chosen


def baseline_scorers(fitted: dict[str, object], table: ItemTable, seed: int = 0, chosen: dict | None = None,
                     clicks: pd.DataFrame | None = None, available: np.ndarray | None = None) -> dict[str, Scorer]:
    """Scorers of the fitted baselines (and "+ trend boost" variants where ``chosen`` holds a boost)."""
    def random_scores(s: Slice) -> np.ndarray:
        return np.random.default_rng(seed).random((len(s.user_ids), len(table)))

    scorers: dict[str, Scorer] = {"random": random_scores}
    for name, method in fitted.items():
        scorers[name] = lambda s, method=method: method.score(s.user_ids, s.histories)
        setting = trend_boost.TrendSetting.from_dict((chosen or {}).get(name, {}).get("trend"))
        if setting.weight > 0 and clicks is not None:
            def boosted(s: Slice, method=method, setting=setting) -> np.ndarray:
                trend = trend_boost.trend_matrix(clicks, s.cuts, table, setting.half_life_hours, setting.tag_share)
                return trend_boost.boosted(method.score(s.user_ids, s.histories), s.exclude, available, trend, setting.weight,
                                           slots=setting.slots)

            scorers[f"{name} + trend boost"] = boosted
    return scorers


def raw_scorer(trained: TrainedTwoTower) -> Scorer:
    """The towers' scores [users, items] for a slice, computed once per slice however often asked."""
    items = trained.item_vectors()
    computed: dict[int, tuple[Slice, np.ndarray]] = {}

    def scores(s: Slice) -> np.ndarray:
        if id(s) not in computed:  # the slice is kept with its scores, so its id is never reused meanwhile
            computed[id(s)] = (s, trained.user_vectors(s.user_ids, s.history_rows, s.histories) @ items.T)
        return computed[id(s)][1]

    return scores


def model_scorer(trained: TrainedTwoTower, clicks: pd.DataFrame | None = None, available: np.ndarray | None = None,
                 raw: Scorer | None = None) -> Scorer:
    """The model ranked as serving ranks it: with ``clicks`` (positives before the cut), its trend boost
    (chosen on validation at training) lifts the best ``CANDIDATES`` of each user; without, raw scores.
    ``raw``: a :func:`raw_scorer` to share with other scorers of the same model."""
    setting = trained.trend
    raw_scores = raw or raw_scorer(trained)

    def scores(s: Slice) -> np.ndarray:
        raw = raw_scores(s)
        if clicks is None or setting.weight == 0:
            return raw
        trend = trend_boost.trend_matrix(clicks, s.cuts, trained.table, setting.half_life_hours, setting.tag_share)
        return trend_boost.boosted(raw, s.exclude, available, trend, setting.weight, slots=setting.slots)

    return scores


def evaluate_scorers(scorers: dict[str, Scorer], slices: list[Slice], raw_table: ItemTable, popularity: np.ndarray,
                     available: np.ndarray, ks=KS, seed: int = 0) -> dict:
    """{slice: {"users", "methods": {method: {metric: value}}}} on the same users and candidates."""
    results = {}
    tie_ranks = metrics.tie_break(len(raw_table), seed)
    n_available = int(available.sum())
    for s in slices:
        results[s.name] = {"users": len(s.user_ids), "methods": {}}
        for name, scorer in scorers.items():
            top = score_slices(scorer, [s], available, ks, tie_ranks)[s.name]
            row = ranking_metrics(top, s, n_available, ks)
            row["diversity@10"] = metrics.intra_list_diversity(top, raw_table.vectors, 10)
            row["novelty@10"] = metrics.novelty(top, popularity, 10)
            results[s.name]["methods"][name] = row
    return results


def protocol_text(split: TimeSplit, policy: SeenPolicy, slices: list[Slice], test_users: int) -> list[str]:
    counts = ", ".join(f"{s.name} {len(s)}" for s in slices)
    return [
        f"split: {split.spec.protocol()} (test from {split.test_start}; {split.describe()['train_events']:,} train, "
        f"{split.describe()['validation_events']:,} validation, {split.describe()['test_events']:,} test events)",
        f"evaluable users: {counts} of {test_users} active in the test period (warm: history before the cut and something new to find; "
        f"new: no history, their first {NEW_USER_HISTORY} test clicks are given as history; "
        "cold items: relevant items created in the test period)",
        f"candidates: every item existing by the end of the test period, minus {policy.describe()} (seen-item policy); "
        "ties broken by a fixed random permutation",
        "baselines' settings chosen on validation (train -> validation), then refit on everything before the test cut, as the model is",
        f"models rank as served: the {CANDIDATES} best unseen items by the model, lifted by the trend boost chosen on validation "
        "(item click velocity from clicks before the cut); '(no trend boost)' shows the model alone, "
        "'+ trend boost' a baseline given the same treatment",
    ]


def evaluate(dataset_dir: str | Path, models: dict[str, str | Path], out_dir: str | Path | None = None, vectors_path=None,
             extra_scorers: Callable[[TimeSplit, ItemTable], dict[str, Scorer]] | None = None, seed: int = 0,
             split_spec: SplitSpec | None = None, policy: SeenPolicy | None = None, baselines: bool = True, include_two_tower: bool = True,
             log=print) -> dict:
    """Evaluate trained models (name -> directory) beside the baselines on one split.

    ``split_spec`` None: the models' own split (they must agree). A model trained on events at or after
    the test cut is refused: its numbers would be leaked. ``extra_scorers(split, item table)`` adds
    methods scored on the same users and candidates (the built-in world passes its oracle).
    """
    dataset_dir = Path(dataset_dir)
    policy = policy or SeenPolicy()
    loaded = {name: TrainedTwoTower.load(path) for name, path in models.items()}
    if not loaded and split_spec is None:
        raise ValueError("give at least one --model, or a split rule to evaluate baselines alone")
    specs = {name: t.config.split_spec() for name, t in loaded.items()}
    spec = split_spec or next(iter(specs.values()))
    config: TrainConfig = next(iter(loaded.values())).config if loaded else TrainConfig()
    split, raw_table, _, _ = prepare(dataset_dir, dataclasses.replace(config, **_spec_fields(spec)), vectors_path)
    for name, trained in loaded.items():
        if list(trained.table.ids) != list(raw_table.ids):
            raise ValueError(f"model {name!r} was trained on a different item table than {dataset_dir} now holds; retrain it")
        seen_until = trained.history.get("trained_until")
        if seen_until is not None and not split.per_user and pd.Timestamp(seen_until) >= split.test_start:
            raise ValueError(f"model {name!r} was trained on events up to {seen_until}, at or after this split's test start "
                             f"{split.test_start}: its numbers would be leaked. Retrain it with the same split ({spec.protocol()}).")
        if specs[name] != spec and split.per_user:
            raise ValueError(f"model {name!r} was trained with '{specs[name].protocol()}', not '{spec.protocol()}'; "
                             "retrain it with this split")
    history_length = config.history_length
    slices = build_slices(split, raw_table, history_length, policy)
    scorers: dict[str, Scorer] = {}
    chosen = {}
    available = available_items(raw_table, split.end)
    clicks = positives(pd.concat([split.train, split.validation]))
    if baselines:
        fitted, chosen = fit_baselines(split, raw_table, policy, history_length, seed, include_two_tower, log)
        scorers.update(baseline_scorers(fitted, raw_table, seed, chosen, clicks, available))
    for name, trained in loaded.items():
        raw = raw_scorer(trained)  # the towers score each slice once for both rows
        scorers[name] = model_scorer(trained, clicks, available, raw)
        if trained.trend.weight > 0:  # what the boost adds, shown beside the served ranking
            scorers[f"{name} (no trend boost)"] = model_scorer(trained, raw=raw)
    if extra_scorers is not None:  # e.g. the built-in world's oracle (vistaste.bench.world.oracle_scorers)
        scorers.update(extra_scorers(split, raw_table))
    popularity = np.bincount(positive_rows(split.train, raw_table)["row"].to_numpy(), minlength=len(raw_table)).astype(float)
    test_users = int(positives(split.test)["user_id"].nunique())
    results = {"split": split.describe(), "seen_policy": dataclasses.asdict(policy),
               "protocol": protocol_text(split, policy, slices, test_users),
               "slices": evaluate_scorers(scorers, slices, raw_table, popularity, available, seed=seed),
               "test_users_total": test_users, "models": {k: str(v) for k, v in models.items()}, "baseline_settings": chosen}
    if out_dir is not None:
        write_report(results, Path(out_dir), {name: t.history for name, t in loaded.items()})
    return results


def _spec_fields(spec: SplitSpec) -> dict:
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}


TABLE_COLUMNS = ("recall@10", "recall@50", "recall@100", "ndcg@10", "ndcg@50", "mrr", "coverage@10", "coverage@50", "diversity@10",
                 "novelty@10")


def results_table(results: dict, slice_name: str, columns=TABLE_COLUMNS) -> pd.DataFrame:
    methods = results["slices"][slice_name]["methods"]
    return pd.DataFrame({m: {c: v[c] for c in columns} for m, v in methods.items()}).T


def write_report(results: dict, out_dir: Path, histories: dict[str, dict]) -> None:
    """report.json, report.md, recall_at_k.png and training_curves.png in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(results, out_dir / "report.json")
    lines = ["# Offline evaluation", "", "## Protocol", "", *[f"- {line}" for line in results["protocol"]], ""]
    for name, block in results["slices"].items():
        lines += [f"## {name} ({block['users']} users)", "", results_table(results, name).to_markdown(floatfmt=".4f"), ""]
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text("\n".join(lines))

    # One colour per method, the same in every panel: the default cycle has 10, a report has 11 methods or more.
    methods = list(dict.fromkeys(m for block in results["slices"].values() for m in block["methods"]))
    colour = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(results["slices"]), figsize=(5 * len(results["slices"]), 4), squeeze=False)
    for ax, (name, block) in zip(axes[0], results["slices"].items()):
        for method, values in block["methods"].items():
            ax.plot(KS, [values[f"recall@{k}"] for k in KS], marker="o", label=method, color=colour[method])
        ax.set(title=f"{name} ({block['users']} users)", xlabel="K", ylabel="recall@K")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "recall_at_k.png", dpi=110)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, history in histories.items():
        epochs = [e["epoch"] for e in history.get("epochs", [])]
        left.plot(epochs, [e["loss"] for e in history["epochs"]], marker=".", label=name)
        right.plot(epochs, [e.get("val_ndcg@50", np.nan) for e in history["epochs"]], marker=".", label=name)
    left.set(title="training loss", xlabel="epoch")
    right.set(title="validation nDCG@50", xlabel="epoch")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "training_curves.png", dpi=110)
    plt.close(fig)

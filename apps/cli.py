"""The `vistaste` command line. Each command only wraps library functions (parse options, call, print);
one module on purpose, so `vistaste --help` and this file list the same commands in the same order."""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Optional

import typer

from vistaste.apps.output import console, print_results, table
from vistaste.bench.sim_config import ARMS, SimulationConfig
from vistaste.bench.world_config import WorldConfig
from vistaste.data.embedding import EMBED_BATCH
from vistaste.data.trends import TrendSetting
from vistaste.serving.feedback import FEEDBACK_DB_DEFAULT
from vistaste.serving.rerank import DEFAULT_METHOD, DEFAULT_TRADE_OFF, METHOD_HELP, Method
from vistaste.serving.settings import MODELS_DIR
from vistaste.towers.config import CANDIDATES, TrainConfig
from vistaste.towers.finetune_config import FinetuneConfig
from vistaste.towers.tuning import DEFAULT_GRID, TUNABLE

app = typer.Typer(
    help="vistaste: personalized visual discovery. Flow: world -> embed -> train -> export -> recommend / serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global_options(
    verbose: bool = typer.Option(False, "--verbose",
                                 help="Show TensorFlow's warnings and errors (C++ and Python logs), hidden by default."),
):
    # Runs before any command, so before TensorFlow is imported: its C++ logging reads the level only once.
    if verbose:
        from vistaste import _quiet

        _quiet.set_tensorflow_log_level(_quiet.VERBOSE)


@app.command()
def world(
    out: Path = typer.Option(Path("world"), "--out", help="Directory to write the world into."),
    items: int = typer.Option(WorldConfig.items, help="Number of catalog items."),
    users: int = typer.Option(WorldConfig.users, help="Number of users."),
    days: int = typer.Option(WorldConfig.days, help="Days of simulated sessions."),
    seed: int = typer.Option(WorldConfig.seed, help="Random seed: same seed, identical files."),
    images: bool = typer.Option(WorldConfig.images, "--images/--no-images",
                                help="Render PNGs, or write item_vectors.parquet instead (scale tests)."),
    image_size: int = typer.Option(WorldConfig.image_size, help="Image side in pixels."),
    workers: int = typer.Option(2, help="Processes rendering images."),
    behaviours: bool = typer.Option(True, "--behaviours/--no-behaviours",
                                    help="Users who tire of tastes, leave monotonous slates, follow trends and come back when "
                                         "satisfied (the default), or the world before them (users tire only of re-clicking an item)."),
):
    """Generate the built-in world.

    Outputs in OUT: catalog.parquet (item_id, image_path, tags, created_at), interactions.parquet
    (user_id, item_id, timestamp, event, position), users.parquet, images/*.png or item_vectors.parquet,
    ground_truth/ (hidden tastes and trends, for the oracle), contact_sheet.png and summary.json.
    """
    from vistaste.bench.world import generate_world

    shape = dict(items=items, users=users, days=days, seed=seed, images=images, image_size=image_size)
    config = WorldConfig(**shape) if behaviours else WorldConfig.without_behaviours(**shape)
    summary = generate_world(out, config, workers=workers)
    rows = [(k, summary[k]) for k in ("items", "cold_items", "users", "events", "impressions", "clicks", "saves", "ctr")]
    console.print(table(f"world in {out}", rows, ("what", "value")))
    per_day = summary["events_per_day"]
    day_rows = [(day, v.get("impression", 0), v.get("click", 0), f"{v.get('click', 0) / max(v.get('impression', 1), 1):.3f}")
                for day, v in per_day.items()]
    console.print(table("events per day", day_rows, ("day", "impressions", "clicks", "ctr")))
    for trend in summary["trends"]:
        console.print(f"trend: {trend['attribute']}={trend['value_name']} peaks on day {trend['peak_day']:.1f}")
    if images:
        console.print(f"contact sheet: {out / 'contact_sheet.png'}")


@app.command()
def validate(
    directory: Path = typer.Argument(..., help="Dataset directory with catalog and interactions tables (.parquet or .csv)."),
    check_images: bool = typer.Option(True, "--check-images/--no-check-images", help="Check that every image_path exists."),
):
    """Check a dataset against the data contract.

    Prints every problem with file, row and column; exits 1 if any error was found (warnings, such as
    timestamps out of order, are printed but do not fail).
    """
    from vistaste.data.validation import validate_dataset

    report, _ = validate_dataset(directory, check_images=check_images)
    for problem in report.problems:
        console.print(str(problem), markup=False, highlight=False, soft_wrap=True)
    counts = ", ".join(f"{k}: {v} rows" for k, v in report.row_counts.items())
    n_warn = len(report.problems) - len(report.errors)
    console.print(f"{directory}: {counts}; {len(report.errors)} error(s), {n_warn} warning(s)", markup=False, soft_wrap=True)
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def embed(
    directory: Path = typer.Argument(..., help="Dataset directory whose catalog has image_path."),
    backbone: str = typer.Option("efficientnet-lite0-onnx",
                                 help="efficientnet-lite0-onnx (default: onnxruntime, fastest on CPU), efficientnet-lite0 "
                                 "(same weights in Keras, trainable), keras-resnet50, keras-efficientnetb0, or finetuned:DIR "
                                 "(a backbone from `vistaste finetune`)."),
    weights: Optional[Path] = typer.Option(None, help="Weights file for the backbone (default: the packaged EfficientNet-Lite0 weights)."),
    batch: int = typer.Option(EMBED_BATCH, "--batch", help="Images per inference batch."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default: DIRECTORY)."),
    pca_dim: Optional[int] = typer.Option(None, help="Reduce vectors with PCA fitted on the catalog (e.g. 128)."),
    whiten: bool = typer.Option(False, help="Whiten the PCA output."),
    workers: Optional[int] = typer.Option(None,
                                          help="Parallel workers, each decoding and embedding whole batches (default: one per CPU core)."),
    runner: str = typer.Option("local", help="local (default: the pipeline without Beam), or an Apache Beam runner: direct "
                               "(this machine), dataflow, flink or spark (needs pip install 'vistaste[beam]')."),
    pipeline_arg: Optional[list[str]] = typer.Option(None, "--pipeline-arg",
                                                     help="A Beam pipeline option for the runner, e.g. --pipeline-arg=--project=P "
                                                     "(repeatable); or give them after --."),
    beam_args: Optional[list[str]] = typer.Argument(None, help="Beam pipeline options after --, e.g. -- --region europe-west1."),
):
    """Embed every catalog image with a pretrained backbone.

    Writes embeddings.parquet (item_id, vector), embeddings.manifest.json (backbone, weights hash,
    preprocessing, dim, count) and embedding_errors.csv (item_id, image_path, reason). Incremental and
    resumable through a content-hash cache (.embedding_cache/). Exits 1 if any image failed.

    With --runner direct|dataflow|flink|spark the same work runs as an Apache Beam pipeline (RunInference),
    with the same vectors, reasons and files, plus its shards in embeddings.shards/; it shares the cache,
    so either pipeline after the other embeds nothing twice.
    """
    from vistaste.data.backbones import get_backbone
    from vistaste.data.embedding import embed_catalog

    extra = [*(pipeline_arg or []), *(beam_args or [])]
    if runner != "local":
        from vistaste.data.beam_embedding import RUNNERS, BeamNotInstalled, embed_catalog_beam

        problem = (f"unknown runner {runner!r}; choose from local, {', '.join(RUNNERS)}" if runner not in RUNNERS else
                   "--pca-dim is not supported with a Beam runner: run `vistaste embed` (local) with --pca-dim afterwards; "
                   "it reuses every vector from the cache" if pca_dim else
                   "--workers is for --runner local; give Beam's own options instead (e.g. -- --direct_num_workers=2)"
                   if workers else None)
        if problem:
            console.print(f"error: {problem}", style="red", markup=False, highlight=False)
            raise typer.Exit(2)
        try:
            result = embed_catalog_beam(directory, backbone, out_dir=out, runner=runner, pipeline_args=extra, batch_size=batch,
                                        weights=weights)
        except BeamNotInstalled as exc:
            console.print(f"error: {exc}", style="red", markup=False, highlight=False)
            raise typer.Exit(2)
    elif extra:
        console.print(f"error: pipeline options {extra} need a Beam runner (--runner direct|dataflow|flink|spark)", style="red",
                      markup=False, highlight=False)
        raise typer.Exit(2)
    else:
        result = embed_catalog(directory, get_backbone(backbone, weights), out_dir=out, batch_size=batch, pca_dim=pca_dim, whiten=whiten,
                               workers=workers)
    rows = [("embedded now", result.embedded), ("from cache", result.cached), ("failed", result.failed),
            ("seconds", f"{result.seconds:.1f}"), ("images/s", f"{result.images_per_second:.0f}")]
    console.print(table(f"embeddings -> {result.output}", rows, ("what", "value")))
    if result.failed:
        console.print(f"{result.failed} image(s) failed; see {result.output.parent / 'embedding_errors.csv'}:", style="red")
        for row in result.errors.head(10).itertuples(index=False):
            console.print(f"  {row.item_id} {row.image_path}: {row.reason}", markup=False, soft_wrap=True)
        raise typer.Exit(1)


SPLIT_HELP = ("Held-out test: give one of --test-fraction (default 0.2: the last 20% of positive events, the common global temporal "
              "split), --test-days, --test-start or --leave-last (each user's last N positives).")


def _split_options(test_fraction, test_days, test_start, leave_last, val_fraction, min_val_users) -> dict:
    return {"test_fraction": test_fraction, "test_days": test_days, "test_start": test_start, "leave_last": leave_last,
            "val_fraction": val_fraction, "min_val_users": min_val_users}


@app.command()
def train(
    directory: Path = typer.Argument(..., help="Dataset directory: catalog, interactions, and item vectors "
                                     "(embeddings.parquet or item_vectors.parquet)."),
    out: Path = typer.Option(Path("model"), help="Directory for the trained towers (written atomically)."),
    vectors: Optional[Path] = typer.Option(None, help="Item vector table (item_id, vector) to use instead of DIRECTORY's: "
                                           "bring your own features."),
    feedback: Optional[str] = typer.Option(None, help="Feedback store to add to the logs: the SQLite file or postgresql:// URL "
                                           "`vistaste serve` wrote to, or a Parquet export."),
    epochs: int = typer.Option(TrainConfig.epochs, help="Maximum epochs (early stopping on validation nDCG@50, with --patience)."),
    patience: int = typer.Option(TrainConfig.patience, help="Epochs without a better validation score before stopping."),
    batch_size: int = typer.Option(TrainConfig.batch_size, help="Examples per batch (= in-batch negatives)."),
    learning_rate: float = typer.Option(TrainConfig.learning_rate),
    temperature: float = typer.Option(TrainConfig.temperature, help="Softmax temperature on cosine scores."),
    logq: bool = typer.Option(TrainConfig.logq_correction, "--logq/--no-logq",
                              help="Sampling-bias (logQ) correction of in-batch negatives."),
    user_id: bool = typer.Option(TrainConfig.use_user_id, "--user-id/--no-user-id", help="Use a user-id embedding in the user tower."),
    item_id: bool = typer.Option(TrainConfig.use_item_id, "--item-id/--no-item-id",
                                 help="Hybrid item tower: an id embedding for items with enough training clicks, beside content."),
    min_item_interactions: int = typer.Option(TrainConfig.min_item_interactions,
                                              help="Training clicks an item needs for its own id embedding."),
    test_fraction: Optional[float] = typer.Option(None, help="Last share of positive events held out for testing (default 0.2)."),
    test_days: Optional[float] = typer.Option(None, help="Last days held out for testing."),
    test_start: Optional[str] = typer.Option(None, help="Timestamp from which events are held out for testing (ISO 8601)."),
    leave_last: Optional[int] = typer.Option(None, help="Hold out each user's last N positives instead of a global time cut."),
    val_fraction: float = typer.Option(TrainConfig.val_fraction,
                                       help="Share of positives before the test cut used for validation (early stopping)."),
    min_val_users: int = typer.Option(TrainConfig.min_val_users,
                                      help="Fewest validation users accepted (fewer: a clear error, not a noisy epoch)."),
    refit: str = typer.Option(TrainConfig.refit, help="After choosing the epochs: retrain on everything before the test cut (before-test, "
                              "what `evaluate` measures), on every event (all: to ship), or keep the train-only model (none)."),
    recency_half_life_days: float = typer.Option(TrainConfig.recency_half_life_days,
                                                 help="Training examples weigh 2^(-age / this many days), age from the log's last click "
                                                      "(leave-last: the user's own); 0: every example weighs the same."),
    trend_boost: bool = typer.Option(TrainConfig.trend_boost, "--trend-boost/--no-trend-boost",
                                     help="Choose on validation how much recent click velocity lifts each user's candidates "
                                     "(shipped with the model)."),
    min_breadth: float = typer.Option(TrainConfig.min_breadth,
                                      help="Take a trend boost only if the validation users' top 10s still cover at least this many "
                                      "times the items most-popular's would (0: no floor)."),
    collaborative: bool = typer.Option(TrainConfig.collaborative, "--collaborative/--no-collaborative",
                                       help="Beside the towers, an ALS term (implicit) whose weight is chosen on validation (0 when "
                                       "it does not help); it broadens the ranking on real logs."),
    seed: int = typer.Option(TrainConfig.seed),
    distributed: bool = typer.Option(False, "--distributed",
                                     help="Data-parallel over the workers in TF_CONFIG (every worker runs this command): exactly "
                                     "--epochs epochs on --refit's logs, --batch-size split across workers, no validation; the "
                                     "chief writes OUT. See docs/scaling.md."),
):
    """Train the two-tower model on click logs, held out by time.

    Positives are clicks and saves; in-batch softmax with logQ correction. The epoch count is chosen on
    validation, then the model is refit with it (see --refit). Writes OUT/ (config.json, weights,
    item_table.npz, pca.npz, history.json). Resumes if a previous run into OUT was killed.
    """
    _train_or_tune(**locals())


def _train_or_tune(directory, out, vectors, feedback, epochs, patience, batch_size, learning_rate, temperature, logq, user_id, item_id,
                   min_item_interactions, test_fraction, test_days, test_start, leave_last, val_fraction, min_val_users, refit,
                   recency_half_life_days, trend_boost, min_breadth, collaborative, seed, distributed=False, grid=None):
    """The body `train` (no grid) and `tune` (a grid searched on validation) share, as they share every option."""
    from vistaste.towers.training import train as train_model

    extra = None
    if feedback is not None:
        from vistaste.serving.feedback import read_feedback_logs

        extra = [read_feedback_logs(feedback)]
    try:
        config = TrainConfig(epochs=epochs, patience=patience, batch_size=batch_size, learning_rate=learning_rate, temperature=temperature,
                             logq_correction=logq, use_user_id=user_id, use_item_id=item_id, min_item_interactions=min_item_interactions,
                             refit=refit, trend_boost=trend_boost, min_breadth=min_breadth, collaborative=collaborative, seed=seed,
                             recency_half_life_days=recency_half_life_days or None,
                             **_split_options(test_fraction, test_days, test_start, leave_last, val_fraction, min_val_users))
        if distributed:
            from vistaste.towers.distributed import train_distributed

            trained = train_distributed(directory, out, config, vectors_path=vectors, extra_logs=extra)
        elif grid is not None:
            from vistaste.towers.tuning import parse_grid
            from vistaste.towers.tuning import tune as tune_model

            search, defaults = parse_grid(grid) if grid else DEFAULT_GRID, TrainConfig()
            given = [name for name in search if getattr(config, name) != getattr(defaults, name)]
            if given:  # an option that the grid would silently override
                raise ValueError(f"{', '.join('--' + n.replace('_', '-') for n in given)} given and also searched by the grid; "
                                 f"give it in --grid only (grid: {', '.join(search)})")
            trained = tune_model(directory, out, config, search, vectors_path=vectors, extra_logs=extra, log=console.print)
        else:
            trained = train_model(directory, out, config, vectors_path=vectors, extra_logs=extra, log=console.print)
    except ValueError as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(2)
    h = trained.history
    if distributed:
        console.print(f"{h['workers']} worker(s), {h['epochs']} epochs, {h['per_replica_batch']} examples per worker per step: "
                      f"{h['train_examples']} clicks ({h['worker_examples']} per worker); refit: {h['refit']}; model -> {out} (chief)",
                      markup=False, highlight=False)
        return
    console.print(f"split: {h['split']['protocol']}", markup=False, highlight=False)
    console.print(f"best epoch {h['best_epoch']} (validation {h['validation_metric']} {h['best_val_' + h['validation_metric']]:.4f}, "
                  f"{h['validation_users']} users); refit: {h['refit']} on {h['train_examples']} clicks; model -> {out}",
                  markup=False, highlight=False)
    c = h.get("collaborative") or {}
    if c.get("beta"):
        said = f"beta {c['beta']:g} (ALS, {c['factors']} factors; {c['chosen_by']})"
    else:
        said = f"none ({c['chosen_by'] if str(c.get('chosen_by', '')).startswith('off') else 'none helped on validation'})"
    console.print(f"collaborative term: {said}", markup=False, highlight=False)
    t = h["trend"]
    console.print("trend boost: " + (f"{TrendSetting.from_dict(t).describe()} ({t['chosen_by']})" if t["weight"] > 0
                                     else f"none ({t['chosen_by'] if t['chosen_by'].startswith('off') else 'none helped on validation'})"),
                  markup=False, highlight=False)


def tune(grid: list[str] = typer.Option([], "--grid", help="A setting and its values to search, NAME=V1,V2,... (repeat for a "
                                      "product grid; default: " + "; ".join(f"{k}={','.join(map(str, v))}" for k, v in DEFAULT_GRID.items())
                                      + "). Tunable: " + ", ".join(TUNABLE) + "."),
         **options):
    """Train one model per point of a small grid and keep the best on validation (never the test period).

    Every other option is `train`'s and means the same; each trial is a whole `train` run (early stopping,
    trend boost, refit), scored by the validation nDCG@50 its epochs were chosen on. Prints each trial and
    what it chose; OUT/history.json records the search. Trials wait in .OUT.tuning/ until the search ends,
    so a killed search resumes with the trials it finished.
    """
    _train_or_tune(**options, grid=grid)


# `tune` takes every option of `train` (one definition, so the two cannot drift) and --grid; not --distributed.
_train_parameters = [p for name, p in inspect.signature(train, eval_str=True).parameters.items() if name != "distributed"]
tune.__signature__ = inspect.Signature([*_train_parameters, inspect.signature(tune, eval_str=True).parameters["grid"]])
tune.__annotations__ = {p.name: p.annotation for p in tune.__signature__.parameters.values()}
app.command()(tune)


@app.command()
def evaluate(
    directory: Path = typer.Argument(..., help="Dataset directory the models were trained on."),
    model: list[Path] = typer.Option([], "--model", help="Trained model directory; repeat to compare several (e.g. with/without logQ)."),
    out: Path = typer.Option(Path("report"), help="Where report.json, report.md and plots go."),
    vectors: Optional[Path] = typer.Option(None, help="Item vector table, if the models were trained with --vectors."),
    test_fraction: Optional[float] = typer.Option(None, help="Override the split: last share of positive events as test."),
    test_days: Optional[float] = typer.Option(None, help="Override the split: last days as test."),
    test_start: Optional[str] = typer.Option(None, help="Override the split: events from this timestamp on are test."),
    leave_last: Optional[int] = typer.Option(None, help="Override the split: each user's last N positives are test."),
    val_fraction: float = typer.Option(TrainConfig.val_fraction,
                                       help="Validation share before the test cut (baselines' settings are chosen there)."),
    seen: str = typer.Option("consumed", help="Seen-item policy: consumed (exclude everything the user clicked before) or recent."),
    no_two_tower_baseline: bool = typer.Option(False, "--skip-id-two-tower", help="Skip the plain TFRS id two-tower baseline (it trains)."),
    seed: int = typer.Option(0, help="Seed for baselines and tie-breaking."),
):
    """Evaluate on the held-out period beside baselines, on one stated protocol.

    Split: the models' own (printed), unless one of --test-fraction/--test-days/--test-start/--leave-last
    is given; a model trained on events after the test cut is refused. Users: warm (history before the
    cut), new (their first 2 test clicks as history), cold items. Candidates: every existing item minus
    what the seen-item policy hides (default: everything the user consumed before). Methods: random,
    most-popular (whole training period and last 7 days), item-kNN, ALS (implicit), content-kNN, a plain
    TFRS id two-tower (settings chosen on validation), your models, and the oracle on the built-in world.
    Metrics: recall/nDCG@10/50/100, MRR, coverage@10/50, diversity, novelty. Writes OUT/report.{json,md},
    recall_at_k.png and training_curves.png."""
    from vistaste.bench.truth import oracle_scorers
    from vistaste.data.seen import SeenPolicy
    from vistaste.data.split import SplitSpec
    from vistaste.towers.evaluation import evaluate as run_evaluation

    names = {}
    for path in model:
        name = path.name if path.name not in names else str(path)
        names[name] = path
    try:
        override = [test_fraction, test_days, test_start, leave_last]
        spec = SplitSpec(test_fraction, test_days, test_start, leave_last, val_fraction) if any(v is not None for v in override) else None
        if spec is None:
            console.print("split: the models' own (give --test-fraction/--test-days/--test-start/--leave-last to set it)", style="yellow")
        results = run_evaluation(directory, names, out_dir=out, vectors_path=vectors, split_spec=spec, policy=SeenPolicy(mode=seen),
                                 include_two_tower=not no_two_tower_baseline, seed=seed, log=console.print,
                                 extra_scorers=oracle_scorers(directory))  # the built-in world's oracle, when there is one
    except ValueError as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(2)
    print_results(results)
    console.print(f"report: {out / 'report.md'}; plots: {out / 'recall_at_k.png'}, {out / 'training_curves.png'}")


@app.command()
def export(
    model: Path = typer.Argument(..., help="Trained model directory (from `vistaste train`)."),
    data: Path = typer.Option(..., "--data", help="Dataset directory: its whole current catalog is indexed (new items included)."),
    out: Path = typer.Option(MODELS_DIR, help="Export root: writes OUT/<version>/ and then OUT/current."),
    k: int = typer.Option(CANDIDATES, help="Items each recommend* signature returns (the catalog size ranks every item)."),
    mode: Optional[str] = typer.Option(None, help="ScaNN searcher: brute_force, ah or tree_ah (default: by catalog size)."),
    num_leaves: Optional[int] = typer.Option(None, help="Partitions for tree_ah (default ~sqrt(items))."),
    num_leaves_to_search: Optional[int] = typer.Option(None),
    reorder: Optional[int] = typer.Option(None, help="Candidates re-scored exactly after hashing."),
    vectors: Optional[Path] = typer.Option(None, help="Item vector table, if training used --vectors."),
    report: Optional[Path] = typer.Option(None, help="report.json from `vistaste evaluate`, copied into the model card."),
    target_recall: Optional[float] = typer.Option(None, "--target-recall", min=0.0, max=1.0,
                                                  help="Tune leaves searched and re-scoring depth to this recall@k vs exact search on "
                                                       "known users' queries and new users' (random histories), each "
                                                       "(default 0.95, past 20k items; 0: keep the setting by "
                                                       "catalog size). Ignored with --mode/--num-leaves/--reorder."),
    shards: int = typer.Option(1, min=1, help="Split the catalog into this many ScaNN indexes (by a stable hash of the item id), "
                               "queried together and merged: for catalogs past one index's memory."),
):
    """Export the user tower + a ScaNN index over every catalog item as one SavedModel version.

    Signatures: `recommend` (user_id), `recommend_history` (user_id, history item ids), `recommend_unseen`
    (+ item ids to exclude, k): ranked as `evaluate` measures, the trend boost included; `candidates` (the
    model's order alone) and `user_embedding`. Beside it:
    items.npz, catalog.parquet, model_card.json. Reload with `import scann; tf.saved_model.load(...)`.
    """
    from vistaste.serving.export import export as run_export
    from vistaste.serving.index import IndexParams
    from vistaste.serving.index_tuning import TARGET_RECALL
    from vistaste.towers.trained import TrainedTwoTower

    requested = (("mode", mode), ("num_leaves", num_leaves), ("num_leaves_to_search", num_leaves_to_search), ("reorder", reorder))
    overrides = {name: value for name, value in requested if value is not None}
    params = None
    if overrides:
        n_items = len(TrainedTwoTower.load(model).table)
        params = IndexParams.for_catalog(n_items, k, **overrides)
    version_dir = run_export(model, data, out, k=k, params=params, vectors_path=vectors, metrics_path=report,
                             target_recall=TARGET_RECALL if target_recall is None else target_recall or None, shards=shards)
    card = json.loads((version_dir / "model_card.json").read_text())
    console.print(f"exported version {card['version']} ({card['data']['items']} items, index {card['index']['mode']}) -> {version_dir}; "
                  f"{out / 'current'} updated")


METHOD_OPTION_HELP = ("Diversity re-ranking over image vectors. " + " ".join(f"{name}: {text}." for name, text in METHOD_HELP.items())
                      + " Without logged impressions (as here) adaptive gives the dpp slates. When to turn diversity up or off: "
                      "docs/diversity.md.")


@app.command()
def recommend(
    user: str = typer.Option(..., "--user", help="User id (unknown users get popular items, flagged)."),
    k: int = typer.Option(20, "-k", help="Slate size."),
    models: Path = typer.Option(MODELS_DIR, help="Export root or a version directory."),
    history: Optional[str] = typer.Option(None, help="Comma-separated item ids to use as the user's recent clicks (anonymous users)."),
    method: Method = typer.Option(DEFAULT_METHOD, help=METHOD_OPTION_HELP),
    trade_off: Optional[float] = typer.Option(None, help="1 = pure relevance, lower = more diverse (default per method: "
                                              + ", ".join(f"{name} {value:g}" for name, value in DEFAULT_TRADE_OFF.items())
                                              + "; for adaptive, the θ of a user who reads whole slates)."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Write a gallery page: recent clicks beside the recommendations."),
):
    """Recommend K items for a user: ScaNN candidates, then re-ranking. Prints item, title (if the catalog
    has a title or name column), score and why."""
    from rich.markup import escape

    from vistaste.data.contract import title_column
    from vistaste.serving.recommender import Recommender

    recommender = Recommender(models)
    given = [h for h in history.split(",") if h] if history else None
    slate = recommender.recommend(user, k, history=given, method=method, trade_off=trade_off)
    # The catalog's title (or name) column, when the export carried one; catalog text is never Rich markup.
    title_col = title_column(recommender.catalog.columns)
    titles = recommender.catalog[title_col].fillna("").astype(str) if title_col else None
    columns = ("#", "item", "title", "score", "why") if titles is not None else ("#", "item", "score", "why")
    rows = []
    for n, r in enumerate(slate.items.itertuples()):
        shown = (escape(titles.get(r.item_id, "")),) if titles is not None else ()
        rows.append((n + 1, escape(r.item_id), *shown, f"{r.score:.4f}", r.reason))
    title = f"{user}: {k} recommendations (model version {slate.version}, history {slate.history_length} clicks)"
    if slate.fallback:
        title += f" - not personalised: {slate.fallback}"
    console.print(table(escape(title), rows, columns))
    if html_out:
        from vistaste.apps.gallery import write_gallery

        clicked = given if given is not None else recommender.stored_history(user)
        write_gallery(html_out, user, clicked, slate.items, recommender.catalog, note=title,
                      dataset_dir=(recommender.card.get("data") or {}).get("dataset_dir"))
        console.print(f"gallery: {html_out}")


@app.command()
def serve(
    models: Path = typer.Option(MODELS_DIR, help="Export root (watched for a new 'current')."),
    feedback_db: str = typer.Option(str(FEEDBACK_DB_DEFAULT), help="Where impressions and clicks go: a SQLite file (one machine) "
                                    "or a postgresql:// URL (one store shared by several replicas; needs vistaste[postgres])."),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    workers: int = typer.Option(1, help="Server processes (each loads the model; SQLite WAL serialises their writes; set "
                                "PROMETHEUS_MULTIPROC_DIR to an empty directory so /metrics adds up every worker)."),
):
    """Serve recommendations over HTTP (FastAPI + uvicorn). Set VISTASTE_API_KEY to accept POST /events.

    Other settings come from VISTASTE_* variables (see vistaste.serving.settings.Settings).
    """
    import uvicorn

    from vistaste.serving.settings import Settings

    if workers > 1:  # worker processes build their own app from VISTASTE_* settings
        # This process only supervises them: it never imports the service (TensorFlow), which took ~3 s of CPU
        # before any worker started (benchmarks/startup.py).
        import os

        os.environ["VISTASTE_MODELS_DIR"], os.environ["VISTASTE_FEEDBACK_DB"] = str(models), str(feedback_db)
        # One TensorFlow thread per worker: requests are tiny, and oversubscribed cores make the tail slow.
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
        Settings()  # validate once here, so a bad setting fails before any worker starts
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            console.print("note: PROMETHEUS_MULTIPROC_DIR is unset, so each worker's /metrics counts only its own requests")
        _supervise("vistaste.serving.service:create_app", host, port, workers)
    else:
        from vistaste.serving.service import create_app

        uvicorn.run(create_app(Settings(models_dir=models, feedback_db=feedback_db)), host=host, port=port, log_level="warning")


def _supervise(factory: str, host: str, port: int, workers: int) -> None:
    """uvicorn's multi-process supervisor, with the exit status it does not give: uvicorn.run returns
    normally (status 0) after a worker fails to start and the supervisor stops the rest."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(factory, factory=True, host=host, port=port, workers=workers, log_level="warning")
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    failed = [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE]
    if failed:
        console.print(f"error: {len(failed)} of {workers} workers failed to start (the reason is above); not serving", style="red")
        raise typer.Exit(STARTUP_FAILURE)


@app.command()
def simulate(
    world_dir: Path = typer.Argument(..., help="A built-in world (from `vistaste world`, embedded if it has images)."),
    out: Path = typer.Option(Path("simulation"), help="Where report.json, report.md and plots go."),
    days: int = typer.Option(SimulationConfig.days, help="Simulated days."),
    warmup_days: int = typer.Option(SimulationConfig.warmup_days, help="The world's first days of logs that every arm starts from."),
    seeds: int = typer.Option(len(SimulationConfig.seeds), help="Independent repetitions (confidence intervals)."),
    arms: Optional[str] = typer.Option(None, help="Comma-separated subset of: " + ", ".join(ARMS) + " (default: all)."),
    slate_size: int = typer.Option(SimulationConfig.slate_size, help="Items served per session."),
    collaborative_beta: float = typer.Option(SimulationConfig.collaborative_beta, min=0.0,
                                             help="The two-tower arms' collaborative term weight, beta (0: towers alone)."),
):
    """Closed-loop online A/B on the built-in world: each day every arm serves the active users through the
    serving re-ranker, users click by their hidden tastes, each arm retrains on its own log. Reports CTR,
    clicks/user, coverage, diversity, cold-item click share and regret vs the oracle, with 95% intervals."""
    from vistaste.bench.simulate import simulate as run_simulation

    config = SimulationConfig(warmup_days=warmup_days, days=days, seeds=tuple(range(seeds)), slate_size=slate_size,
                              arms=tuple(a.strip() for a in arms.split(",")) if arms else ARMS, collaborative_beta=collaborative_beta)
    report = run_simulation(world_dir, out, config)
    rows = [(r["arm"], f"{r['ctr']:.4f} ± {r['ctr_ci95']:.4f}", f"{r['clicks_per_user']:.3f}", f"{r['coverage']:.3f}",
             f"{r['diversity']:.3f}", f"{r['cold_click_share']:.3f}", f"{r['regret']:.4f}") for r in report["summary"]]
    console.print(table(f"simulated A/B: {days} days x {seeds} seeds", rows,
                        ("arm", "CTR (95% CI)", "clicks/user", "coverage", "diversity", "cold clicks", "regret")))
    console.print(f"report: {out / 'report.md'}; plots: {out / 'ctr_over_days.png'}, {out / 'diversity_vs_ctr.png'}")



@app.command()
def finetune(
    directory: Path = typer.Argument(..., help="Dataset directory: catalog with image_path (and tags), interactions."),
    positives: str = typer.Option(..., "--positives", help="tags (items sharing a tag), coclicks (clicked by one user within a short "
                                  "window) or augment (two augmentations of one image: the textbook self-supervised design)."),
    out: Path = typer.Option(..., "--out", help="BACKBONE_DIR to write (atomically); then `vistaste embed DIR --backbone finetuned:OUT`."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Random initialisation, every layer trained (default: the pretrained "
                                      "EfficientNet-Lite0, its last blocks and a projection head trained)."),
    epochs: Optional[int] = typer.Option(None,
                                         help=f"Epochs of as many pairs as there are training items (default {FinetuneConfig.epochs})."),
    batch_size: Optional[int] = typer.Option(
        None, help=f"Pairs per step; the other pairs are the negatives (default {FinetuneConfig.batch_size})."),
    image_size: Optional[int] = typer.Option(
        None, help=f"Resolution the network is trained and run at, in pixels (default {FinetuneConfig.image_size})."),
    tag_weighting: Optional[str] = typer.Option(None, help="coclick-lift (default: each tag family weighted by how much more often "
                                                "than chance items sharing its tags are clicked by the same user in the training "
                                                "period) or raw (every tag weighs the same)."),
    window_minutes: Optional[float] = typer.Option(None,
                                                   help=f"Co-click window in minutes (default {FinetuneConfig.coclick_window_minutes:g})."),
    output: Optional[str] = typer.Option(None, help="What the backbone returns: features (default: the 1280-d pooled features under the "
                                         "projection head) or projection (the head's 128-d unit vectors)."),
    learning_rate: Optional[float] = typer.Option(None, help=f"Adam learning rate (default {FinetuneConfig.learning_rate:g})."),
    temperature: Optional[float] = typer.Option(
        None, help=f"Softmax temperature on cosine similarities (default {FinetuneConfig.temperature:g})."),
    test_fraction: Optional[float] = typer.Option(None, help="Split as `vistaste train` does (default: the last 0.2 of positives are "
                                                  "test, the 0.1 before them validation); positives come from before both."),
    test_days: Optional[float] = typer.Option(None, help="Last days held out for testing."),
    test_start: Optional[str] = typer.Option(None, help="Timestamp from which events are held out for testing (ISO 8601)."),
    leave_last: Optional[int] = typer.Option(None, help="Hold out each user's last N positives instead of a global time cut."),
    seed: int = typer.Option(0),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Fine-tune EfficientNet-Lite0 on positive pairs from the training period (InfoNCE), as a new backbone.

    Writes OUT/model.onnx (the fast embedding path), OUT/weights.npz and OUT/manifest.json (positives,
    epochs, resolution, seconds, peak memory, training-data fingerprint, tag-family weights). Resumes if a
    previous run into OUT was killed. Use it with `vistaste embed DIR --backbone finetuned:OUT`.
    """
    from vistaste.towers.finetune import finetune as run_finetune

    given = {"epochs": epochs, "batch_size": batch_size, "image_size": image_size, "tag_weighting": tag_weighting,
             "coclick_window_minutes": window_minutes, "output": output, "learning_rate": learning_rate, "temperature": temperature,
             "test_fraction": test_fraction, "test_days": test_days, "test_start": test_start, "leave_last": leave_last}
    try:
        config = FinetuneConfig(positives=positives, from_scratch=from_scratch, seed=seed,
                                **{k: v for k, v in given.items() if v is not None})
        result = run_finetune(directory, out, config, progress=not quiet, log=console.print)
    except ValueError as exc:
        console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(2)
    m = result.manifest
    rows = [("positives", f"{m['positives']}{' (from scratch)' if m['from_scratch'] else ''}"), ("trained", m["trained"]),
            ("training period", f"{m['training_period']['start']} .. {m['training_period']['end']}"),
            ("training items", m["training_items"]), ("steps x pairs", f"{m['steps']} x {m['batch_size']}"),
            ("resolution", f"{m['image_size']} px"), ("output", f"{m['output']} ({m['dim']}-d)"),
            ("loss, first -> last epoch", f"{m['loss_per_epoch'][0]:.3f} -> {m['loss_per_epoch'][-1]:.3f}"),
            ("seconds", f"{m['seconds']:.0f}"), ("peak memory (MB)", f"{m['peak_rss_mb']:.0f}")]
    for family in m["pairs"].get("families", []):
        rows.append((f"tag family {family['family']}", f"co-click lift {family['lift']:.2f} -> weight {family['weight']:.2f}"))
    console.print(table(f"fine-tuned backbone -> {out}", rows, ("what", "value")), markup=False, highlight=False)
    console.print(f"next: vistaste embed {directory} --backbone finetuned:{out}", markup=False, highlight=False)


if __name__ == "__main__":
    app()

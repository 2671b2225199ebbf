"""Issue 12's online measure: simulated CTR of the two-tower arm on each embedding of `benchmarks/finetune.py`.

    python benchmarks/finetune_online.py [--world DIR] [--work DIR] [--run seed0-epochs1-224px]
                                         [--arms pretrained-224,tags-weighted,coclicks] [--out JSON]

For each arm, a copy of the world (its files linked, not copied) gets that arm's embeddings from one run of
`benchmarks/finetune.py` (``--run``: its seed, epochs and fine-tuning resolution) as its
item vectors, and `vistaste simulate` runs the two-tower arm (retrieval only, no re-ranking) beside the
oracle: 14 warm-up days of the world's logs, then 14 simulated days, 3 simulation seeds, the users' hidden
tastes deciding the clicks. Run `benchmarks/finetune.py` first (same --world and --work). Writes
benchmarks/results/finetune_online_<resolution>.json (``finetune_online.json``: session 10's run at 128 px, 2 epochs).

Diversity is measured in each arm's own vector space, so it is not comparable across arms (a fine-tuned
embedding puts items of one palette+pattern at cosine ~1.0); CTR and clicks per user are.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import time
from pathlib import Path

import vistaste  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from vistaste.bench.simulate import SimulationConfig, simulate
from vistaste.data.io import write_json

FIGURES = ("ctr", "ctr_ci95", "clicks_per_user", "clicks_per_user_ci95", "diversity", "cold_click_share", "regret")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, default=Path("benchmarks/.work/finetune/world"))
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.work/finetune"))
    parser.add_argument("--run", default="seed0-epochs1-224px", help="the finetune.py run whose embeddings are used")
    parser.add_argument("--arms", default="pretrained-224,tags-weighted,coclicks")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/finetune_online_<resolution>.json")
    args = parser.parse_args()
    args.out = args.out or Path(f"benchmarks/results/finetune_online_{args.run.rsplit('-', 1)[-1].removesuffix('px')}.json")
    results = {}
    for arm in [a.strip() for a in args.arms.split(",") if a.strip()]:
        embeddings = args.work / args.run / arm / "embeddings"
        if arm == "pretrained-224" and not (embeddings / "embeddings.parquet").exists():
            # The frozen network does not depend on the fine-tuning resolution: any run of the same seed has it.
            seed = args.run.split("-")[0]
            found = sorted(p.parent for p in args.work.glob(f"{seed}-*/{arm}/embeddings/embeddings.parquet"))
            embeddings = found[0] if found else embeddings
        if not (embeddings / "embeddings.parquet").exists():
            raise SystemExit(f"{embeddings}: no embeddings; run benchmarks/finetune.py --world {args.world} --work {args.work} "
                             f"(with the seed, --epochs and --image-size of --run {args.run}) first")
        world = args.work / "online" / arm / "world"
        shutil.rmtree(world.parent, ignore_errors=True)
        world.mkdir(parents=True)
        for f in args.world.resolve().iterdir():
            if not f.name.startswith("embedding"):
                (world / f.name).symlink_to(f)
        for name in ("embeddings.parquet", "embeddings.manifest.json"):
            shutil.copy(embeddings / name, world / name)
        started = time.perf_counter()
        config = SimulationConfig(seeds=(0, 1, 2), arms=("two-tower", "oracle"))
        report = simulate(world, world.parent / "simulation", config, progress=False)
        rows = {r["arm"]: r for r in report["summary"]}
        results[arm] = {**{k: rows["two-tower"][k] for k in FIGURES}, "oracle_ctr": rows["oracle"]["ctr"], "embeddings": str(embeddings),
                        "seconds": round(time.perf_counter() - started)}
        r = results[arm]
        print(f"{arm}: CTR {r['ctr']:.4f} ± {r['ctr_ci95']:.4f}, clicks/user {r['clicks_per_user']:.3f} ± {r['clicks_per_user_ci95']:.3f}",
              flush=True)
    write_json({"world": str(args.world), "work": str(args.work), "run": args.run,
                "simulation": "14 warm-up days, 14 simulated days, seeds 0-2, two-tower (no re-ranking) vs oracle",
                "arms": results, "note": __doc__.split("\n\n")[-1].replace("\n", " "), "machine": platform.platform()}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Re-ranker diversity/accuracy trade-off on the built-in world (MMR and DPP, several trade-offs).

    python benchmarks/rerank_tradeoff.py --model demo_out/models/two-tower --data demo_out/world

Prints recall@50, intra-list diversity of the first screen (@10) and of the whole 50-item slate per
setting, relative to no re-ranking; writes benchmarks/results/rerank_tradeoff.{json,png}.
Target: +25% diversity for <= 5% relative recall@50 loss (reported for both diversity measures). The
setting is chosen on the validation days and reported on the test days.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import vistaste  # noqa: F401
from vistaste.serving.tradeoff import plot_tradeoff, rerank_tradeoff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("demo_out/models/two-tower"))
    parser.add_argument("--data", type=Path, default=Path("demo_out/world"))
    args = parser.parse_args()
    trade_offs = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3)
    validation = rerank_tradeoff(args.model, args.data, trade_offs=trade_offs, period="validation")
    frame = rerank_tradeoff(args.model, args.data, trade_offs=trade_offs)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print()
    # Chosen on the validation days, reported on the test days: the test clicks never pick the setting.
    chosen_ok = validation[validation["recall_change"] >= -0.05]
    summary = []
    for change, label in (("diversity_change", "first-screen diversity@10"), ("slate_diversity_change", "whole-slate diversity@50")):
        pick = chosen_ok.loc[chosen_ok[change].idxmax()]
        test = frame[(frame["method"] == pick["method"]) & (frame["trade_off"] == pick["trade_off"])].iloc[0]
        summary.append({"measure": label, "method": pick["method"], "trade_off": float(pick["trade_off"]),
                        "validation_diversity_change": float(pick[change]), "validation_recall_change": float(pick["recall_change"]),
                        "test_diversity_change": float(test[change]), "test_recall_change": float(test["recall_change"])})
        print(f"most {label} within 5% recall@50 loss, chosen on validation: {pick['method']} at {pick['trade_off']}: "
              f"test diversity {test[change]:+.1%}, recall {test['recall_change']:+.1%} "
              f"(validation {pick[change]:+.1%}, {pick['recall_change']:+.1%}; target: +25%)")
    results = Path("benchmarks/results")
    results.mkdir(parents=True, exist_ok=True)
    (results / "rerank_tradeoff.json").write_text(json.dumps({"chosen_on_validation": summary, "test": frame.to_dict(orient="records"),
                                                              "validation": validation.to_dict(orient="records")}, indent=2))
    plot_tradeoff(frame, results / "rerank_tradeoff.png")


if __name__ == "__main__":
    main()

"""`thrifty router train|calibrate|show|train-verifier`: build and tune the shipped artifacts.

train           fit the router on labelled routing files (each file's training half by
                prompt hash; the other half stays held out for `thrifty bench routing`)
calibrate       set the serving threshold for a quality target (on the artifact's own
                out-of-fold training rows) or for a strong-tier share (on unlabelled prompts)
show            print what an artifact holds
train-verifier  fit the semantic-cache verifier on QQP-format pairs (fit/calibrate split;
                40% of pairs stay held out)
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="router_action", required=True, metavar="ACTION")
    train = sub.add_parser("train", help="train the router on labelled routing CSVs")
    train.add_argument("--data", nargs="+", required=True, help="RouteLLM or RouterBench format CSV files")
    train.add_argument("--out", help="artifact path (default: the one the package ships)")
    train.add_argument("--l2", type=float, default=30.0, help="L2 regularisation strength (30: predicted quality matched realised on held-out MMLU)")
    train.add_argument("--target-quality", type=float, default=0.95, help="initial calibration: share of the strongest model's quality")
    train.add_argument("--embed-cache", help="npz file to reuse embeddings between runs")
    train.add_argument("--encoder", default="all-MiniLM-L6-v2", help="embedding model ('hashed-ngrams:DIM' needs no model)")

    cal = sub.add_parser("calibrate", help="set the threshold for a quality target or strong-tier share")
    cal.add_argument("--artifact", help="artifact to read (default: shipped)")
    cal.add_argument("--out", help="where to write (default: overwrite --artifact)")
    goal = cal.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-quality", type=float, help="share of the strongest model's quality, e.g. 0.95")
    goal.add_argument("--strong-share", type=float, help="share of prompts the strongest tier should take")
    cal.add_argument("--prompts", help="unlabelled prompts for --strong-share: a text file (one per line), JSON list, or CSV with a 'prompt' column")

    show = sub.add_parser("show", help="print an artifact's metadata")
    show.add_argument("--artifact", help="artifact to read (default: shipped)")

    ver = sub.add_parser("train-verifier", help="train the semantic-cache verifier on QQP-format pairs")
    ver.add_argument("--data", required=True, help="JSON lines {text_a, text_b, label}")
    ver.add_argument("--out", help="artifact path (default: shipped)")
    ver.add_argument("--precision", type=float, default=0.95, help="precision target on the calibration split")
    ver.add_argument("--floor", type=float, default=0.80, help="cosine floor for candidates")
    ver.add_argument("--embed-cache", help="npz file to reuse embeddings between runs")
    ver.add_argument("--max-pairs", type=int, default=9000, help="sample this many fit/calibrate pairs (0: all); held-out pairs are never read")


def _fail(message: str) -> int:
    print(f"thrifty router: {message}", file=sys.stderr)
    return 2


def _read_prompts(path: str) -> list[str]:
    import csv
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError("expected a JSON list")
        return [d if isinstance(d, str) else str(d.get("prompt", "")) for d in data]
    if path.endswith(".csv"):
        csv.field_size_limit(1 << 30)
        return [row["prompt"] for row in csv.DictReader(text.splitlines(keepends=True))]
    return [line for line in text.splitlines() if line.strip()]


def run(args: argparse.Namespace) -> int:
    try:
        if args.router_action == "train":
            return _train(args)
        if args.router_action == "calibrate":
            return _calibrate(args)
        if args.router_action == "show":
            return _show(args)
        return _train_verifier(args)
    except (OSError, ValueError, KeyError) as exc:
        return _fail(str(exc))


def _train(args: argparse.Namespace) -> int:
    from thrifty.proxy.levers.embedder import encode_with_disk_cache, encoder_for
    from thrifty.proxy.levers.router import ARTIFACT
    from thrifty.training.labels import load_labelled
    from thrifty.training.router_fit import train_router

    sets = [load_labelled(p) for p in args.data]
    encoder = encoder_for(args.encoder, threads=2)
    model = train_router(sets, lambda texts: encode_with_disk_cache(encoder, texts, args.embed_cache), embedder_name=encoder.name, l2=args.l2, quality_target=args.target_quality)
    out = args.out or ARTIFACT
    model.save(out)
    print(f"router artifact written to {out}: {model.meta['rows']} training prompts, {len(model.heads)} model heads, threshold {model.threshold:.3f}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    from thrifty.proxy.levers.router import ARTIFACT, RouterModel
    from thrifty.training.router_calibration import threshold_for_quality, threshold_for_strong_share

    src = args.artifact or ARTIFACT
    model = RouterModel.load(src)
    if args.target_quality is not None:
        if not 0 < args.target_quality <= 1:
            return _fail("--target-quality must be in (0, 1]")
        model.threshold = threshold_for_quality(model.calibration, args.target_quality)
        model.meta["calibrated_for"] = {"quality_target": args.target_quality}
        weak = model.calibration[:, 0] >= model.threshold
        detail = f"strong share on training rows {1 - weak.mean():.3f}"
    else:
        if not args.prompts:
            return _fail("--strong-share needs --prompts (unlabelled prompts)")
        from thrifty.proxy.levers.embedder import encoder_for

        prompts = _read_prompts(args.prompts)
        if not prompts:
            return _fail(f"{args.prompts}: no prompts")
        encoder = encoder_for(model.embedder, threads=2)
        scores = model.ease_scores(encoder.encode(prompts), prompts)
        model.threshold = threshold_for_strong_share(scores, args.strong_share)
        model.meta["calibrated_for"] = {"strong_share": args.strong_share, "prompts": len(prompts)}
        detail = f"on {len(prompts)} prompts: strong share {float(np.mean(scores < model.threshold)):.3f}"
    out = args.out or src
    model.save(out)
    print(f"threshold {model.threshold:.4f} ({detail}) written to {out}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from thrifty.proxy.levers.router import ARTIFACT, RouterModel

    model = RouterModel.load(args.artifact or ARTIFACT)
    print(json.dumps({"embedder": model.embedder, "dim": model.dim, "threshold": model.threshold, "heads": list(model.heads), "trained_prompts": int(len(model.trained_prompts)), "mean_costs": model.mean_costs, **model.meta}, indent=2))
    return 0


def _train_verifier(args: argparse.Namespace) -> int:
    import numpy as np

    from thrifty.proxy.levers.embedder import MiniLMEncoder, encode_with_disk_cache
    from thrifty.proxy.levers.verifier import ARTIFACT, pair_hash
    from thrifty.training.qqp_pairs import pairs_and_labels
    from thrifty.training.verifier_fit import split_of, train_verifier

    pairs, labels = pairs_and_labels(args.data)

    usable = np.array([i for i, p in enumerate(pairs) if split_of(p) != "heldout"], dtype=int)
    not_held_out = frozenset(pair_hash(*pairs[i]) for i in usable)  # benches never score these
    if args.max_pairs and len(usable) > args.max_pairs:
        usable = np.random.default_rng(1).choice(usable, args.max_pairs, replace=False)
    pairs = [pairs[i] for i in usable]
    labels = labels[usable]
    encoder = MiniLMEncoder(threads=2)
    a = encode_with_disk_cache(encoder, [p[0] for p in pairs], args.embed_cache)
    b = encode_with_disk_cache(encoder, [p[1] for p in pairs], args.embed_cache)
    cosines = np.einsum("ij,ij->i", a, b)
    verifier = train_verifier(pairs, cosines, labels, similarity_floor=args.floor, precision_target=args.precision, vectors=(a, b), embedder=encoder.name)
    verifier.trained_pairs = not_held_out
    out = args.out or ARTIFACT
    verifier.save(out)
    print(f"verifier written to {out}: threshold {verifier.threshold:.3f}, floor {verifier.similarity_floor}, {verifier.meta}")
    return 0

"""`python -m engine models [list|prepare NAME|check NAME]`."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list known and cached models; prepare one ahead of time")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.add_parser("list", help="list known models and their local state (default)")
    prepare = sub.add_parser("prepare", help="convert and cache a model ahead of time (warms a demo box)")
    prepare.add_argument(
        "name", help="model name, e.g. gemma-3-270m or smollm2-135m-instruct, or a HF id / folder to check it loads"
    )
    prepare.add_argument("--force", action="store_true", help="rebuild the cache even when it is valid")
    parser.set_defaults(func=run)


def run(args) -> int:
    from engine.core import embedded, loading, registry

    if args.action in (None, "list"):
        rows = registry.list_models()
        width = max(len(r["name"]) for r in rows)
        for row in rows:
            print(f"{row['name']:<{width}}  {row['state']:<24}  {row['description']}")
        return 0
    if args.name in embedded.EMBEDDED_MODELS:
        path = embedded.prepare_embedded(force=args.force, log=lambda m: print(m, file=sys.stderr), name=args.name)
        print(path)
        return 0
    lm = loading.load_model(args.name)
    print(f"{lm.describe()} (loaded in {lm.load_seconds:.1f} s from {lm.source})")
    return 0

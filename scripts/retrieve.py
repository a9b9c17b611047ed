"""Batch generative retrieval: the top-K allowed items of every query, sharded, resumable.

With no arguments it runs the main job end to end on the built-in synthetic data (trains the
tiny retriever if ``runs/retrieval/synthetic/model`` holds none, runs the batch job on the test
split and prints the evaluation table; see ``retrieval/end_to_end.py``)::

    python scripts/retrieve.py                                   # synthetic, end to end
    python scripts/retrieve.py --dataset movielens-100k --json ml100k.json

With ``--run`` it is the batch job over your own queries::

    python scripts/retrieve.py --run RUN_DIR --queries QUERIES --out OUT_DIR \\
        --k 10 --beams 20 [--allowed-items FILE | --allowed-where "category=c3" ...] \\
        [--segment-column region --segment-attribute region] [--format jsonl] [--overwrite]

Under ``jax.distributed`` (``--coordinator HOST:PORT --num-processes N --process-id I``) each
process takes its own share of the query files; together they write each query once.
"""

from __future__ import annotations

import argparse
import json
import os

# Help and argument errors come before the heavy imports (JAX, the model).


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    e2e = parser.add_argument_group("end to end (no --run)")
    e2e.add_argument("--dataset", default="synthetic", choices=("synthetic", "movielens-100k"),
                     help="built-in data set (MovieLens-100K needs `pip install --no-deps recbole==1.2.1`)")
    e2e.add_argument("--workdir", default=None, help="folder for the model, queries, output (default: runs/retrieval/DATASET)")
    e2e.add_argument("--steps", type=int, default=None, help="training steps (default: the dataset's recipe)")
    e2e.add_argument("--model-size", default=None, choices=("tiny", "small"), help="retriever size (default: the dataset's recipe)")
    e2e.add_argument("--exact-users", type=int, default=500, help="test users whose every item is scored exactly (0: all)")
    e2e.add_argument("--json", default=None, help="also write the results to this JSON file")
    job = parser.add_argument_group("the batch job (--run)")
    job.add_argument("--run", default=None, help="a trained retriever run folder (config.json, catalog/, params/)")
    job.add_argument("--queries", default=None, help="a queries file or directory of shards (CSV, TSV, Parquet, JSONL)")
    job.add_argument("--out", default=None, help="output folder (shards + manifest.json); resumed if it holds this job")
    job.add_argument("--k", type=int, default=10, help="items per query (default 10)")
    job.add_argument("--beams", type=int, default=20, help="beam width, >= k (default 20)")
    job.add_argument("--batch-size", type=int, default=64, help="queries per device call, over all local devices (default 64)")
    job.add_argument("--shard-rows", type=int, default=4096, help="queries per output shard (default 4096)")
    job.add_argument("--format", default="parquet", choices=("parquet", "jsonl"), help="output shard format")
    job.add_argument("--allowed-items", default=None, help="file of allowed item ids (one per line, or a table with item_id)")
    job.add_argument("--allowed-where", action="append", default=[],
                     help="predicate on item attributes, e.g. 'category=c3' or 'release_time>=1e9' (repeatable, ANDed)")
    job.add_argument("--keep-history", action="store_true", help="allow items of the query's own history in its results")
    job.add_argument("--segment-column", default=None, help="query column naming the query's allowed segment")
    job.add_argument("--segment-attribute", default=None, help="item attribute holding each item's segment")
    job.add_argument("--user-column", default="user_id", help="query column of user ids (default user_id)")
    job.add_argument("--history-column", default="history", help="query column of history item ids (default history)")
    job.add_argument("--unknown-items", default="error", choices=("error", "drop"),
                     help="a history item the catalog lacks: fail naming the file and line, or leave it out")
    job.add_argument("--overwrite", action="store_true", help="replace an output folder that holds another job")
    dist = parser.add_argument_group("multi-host (jax.distributed)")
    dist.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (enables jax.distributed)")
    dist.add_argument("--num-processes", type=int, default=None, help="number of processes")
    dist.add_argument("--process-id", type=int, default=None, help="this process's index")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _end_to_end(args: argparse.Namespace) -> dict:
    from retrieval.end_to_end import run_end_to_end
    from retrieval.evaluate import EvalSettings, format_table
    from retrieval.recipes import data_recipe, training_recipe

    workdir = args.workdir or os.path.join("runs", "retrieval", args.dataset)
    train = training_recipe(args.dataset, steps=args.steps, model_size=args.model_size)
    exact_users = None if args.exact_users == 0 else args.exact_users
    results = run_end_to_end(workdir, data_recipe(args.dataset), train,
                             evaluation=EvalSettings(exact_users=exact_users), progress=not args.no_progress)
    data = results["data"]
    print(f"\n{args.dataset}: {data['items']} items ({data['cold_items']} cold), {data['users']} users, "
          f"semantic IDs {data['id_levels']} (codebook usage {data['codebook_usage']}, "
          f"collision rate {data['collision_rate']:.2%}, {data['embeddings']} embeddings)")
    job = results["job"]
    print(f"batch job: {job['queries']} queries in {job['seconds']:.1f} s ({job['queries_per_second']:.0f} queries/s) "
          f"on {job['devices']} device(s), {job['processes']} process(es); invalid outputs: {job['invalid_outputs']}")
    print(format_table(results["evaluation"], f"{args.dataset}: test split (leave-one-out)"))
    return results


def _job(args: argparse.Namespace) -> dict:
    import jax

    from retrieval.job import JobSettings, run_job

    if args.coordinator:
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    settings = JobSettings(
        k=args.k, num_beams=args.beams, batch_size=args.batch_size, shard_rows=args.shard_rows,
        output_format=args.format, exclude_history=not args.keep_history, allowed_ids_file=args.allowed_items,
        allowed_where=tuple(args.allowed_where), segment_column=args.segment_column,
        segment_attribute=args.segment_attribute, user_column=args.user_column,
        history_column=args.history_column, unknown_items=args.unknown_items,
    )
    summary = run_job(args.run, args.queries, args.out, settings, overwrite=args.overwrite, progress=not args.no_progress)
    result = summary.as_dict()
    print(json.dumps(result))
    if summary.invalid_outputs:
        raise SystemExit(f"{summary.invalid_outputs} invalid outputs (outside the allowed set, in a history or off-segment)")
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    job_args = (args.run, args.queries, args.out)
    if any(job_args) and not all(job_args):
        parser.error("the batch job needs --run, --queries and --out together")
    if (args.coordinator is None) != (args.num_processes is None) or (args.coordinator is None) != (args.process_id is None):
        parser.error("--coordinator, --num-processes and --process-id go together")
    results = _job(args) if args.run else _end_to_end(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()

"""``python -m hpcnn.bench <benchmark> [options]``; ``--help`` on each benchmark lists options."""

import sys

BENCHMARKS = {
    "train": "hpcnn.bench.train",
    "comm": "hpcnn.bench.comm",
    "scaling": "hpcnn.bench.scaling",
    "conv": "hpcnn.bench.conv",
    "node": "hpcnn.bench.node",
    "ops": "hpcnn.bench.ops",
    "mlp": "hpcnn.bench.mlp",
    "rnn": "hpcnn.bench.rnn",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_train_worker":
        from hpcnn.bench.train import worker_main

        return worker_main(argv[1:])
    if argv and argv[0] == "_scaling_worker":
        from hpcnn.bench.scaling import worker_main

        return worker_main(argv[1:])
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m hpcnn.bench {{{','.join(BENCHMARKS)}}} [options]",
              file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

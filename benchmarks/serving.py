"""Serving benchmark: a concurrency sweep against a running ``pagedllm serve``.

    pagedllm serve --port 8000 &
    PYTHONPATH=src python benchmarks/serving.py --base-url http://127.0.0.1:8000 \
        --concurrency 1,4,16 --out serving.json

The implementation lives in ``pagedllm.entrypoints.openai.bench_serving`` so that
``pagedllm bench serve`` runs the same code.
"""

from __future__ import annotations

from pagedllm.entrypoints.openai.bench_serving import main

if __name__ == "__main__":
    raise SystemExit(main())

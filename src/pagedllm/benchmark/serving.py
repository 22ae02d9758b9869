"""``pagedllm bench serve``: the serving benchmark lives with the server code it drives."""

from pagedllm.entrypoints.openai.bench_serving import add_bench_serve_args, run_bench_serve

__all__ = ["add_bench_serve_args", "run_bench_serve"]

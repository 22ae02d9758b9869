"""Decode-step CPU time at SmolLM2-135M shapes, dummy weights, batch 32, context ~300."""
import statistics, sys, time
import torch
from pagedllm.attention.metadata import ForwardContext, build_metadata, set_forward_context
from pagedllm.attention.torch_backend import TorchAttentionBackend
from pagedllm.models.registry import build_model

torch.set_num_threads(2)
cfg = dict(architectures=["LlamaForCausalLM"], hidden_size=576, intermediate_size=1536,
           num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
           max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
           tie_word_embeddings=True)
B, CTX, BS = 32, 300, int(sys.argv[1]) if len(sys.argv) > 1 else 16
for dtype in (torch.float32, torch.bfloat16):
    model = build_model(cfg, dtype, "cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    blocks_per = -(-(CTX + 64) // BS)
    num_blocks = B * blocks_per
    perm = torch.randperm(num_blocks).tolist()
    tables = [perm[i * blocks_per:(i + 1) * blocks_per] for i in range(B)]
    kv = [torch.randn(2, num_blocks, BS, 3, 64).to(dtype) for _ in range(30)]
    backend = TorchAttentionBackend()
    lens = [CTX - 16 + (i % 32) for i in range(B)]  # mixed, mean ~300
    times, t_md, cpu = [], [], []
    for it in range(20):
        t0 = time.perf_counter(); c0 = time.process_time()
        md = build_metadata([1] * B, [l + it for l in lens], tables, BS)
        t1 = time.perf_counter()
        ids = torch.randint(0, 49152, (B,))
        pos = torch.tensor([l + it - 1 for l in lens])
        with torch.inference_mode(), set_forward_context(ForwardContext(md, kv, backend)):
            logits = model.compute_logits(model(ids, pos))
        t2 = time.perf_counter(); c2 = time.process_time()
        if it >= 2:
            times.append(t2 - t0); t_md.append(t1 - t0); cpu.append(c2 - c0)
    med = statistics.median(times)
    print(f"{dtype} block_size={BS}: decode step median {med*1e3:.1f} ms "
          f"min {min(times)*1e3:.1f} ms, process CPU median {statistics.median(cpu)*1e3:.1f} ms "
          f"(metadata {statistics.median(t_md)*1e3:.2f} ms) -> {B/med:.0f} tok/s median, {B/min(times):.0f} best")

"""A tiny HF Llama (from a config, no download) with gradient checkpointing trains bitwise
the same with and without ckprof (capture + instrument_checkpointing: markers, memory):
same losses, same parameters after 5 AdamW steps.

    python benchmarks/bitwise_capture.py     # exit 1 when anything differs (needs transformers)
"""
from __future__ import annotations

import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import ckprof


def train(with_ckprof: bool, steps: int = 5):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(1))
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(loss.detach().clone())

    if with_ckprof:
        with tempfile.TemporaryDirectory() as d, ckprof.capture(d, wait=1, warmup=1, active=2) as cap, \
                ckprof.instrument_checkpointing():
            for _ in range(steps):
                step()
                cap.step()
    else:
        for _ in range(steps):
            step()
    return losses, [p.detach().clone() for p in model.parameters()]


if __name__ == "__main__":
    torch.set_num_threads(1)
    l0, p0 = train(False)
    l1, p1 = train(True)
    same_loss = all(torch.equal(a, b) for a, b in zip(l0, l1, strict=True))
    same_params = all(torch.equal(a, b) for a, b in zip(p0, p1, strict=True))
    print(f"losses {[round(x.item(), 6) for x in l0]}")
    print(f"bitwise same losses: {same_loss}; bitwise same parameters ({len(p0)} tensors): {same_params}")
    raise SystemExit(0 if same_loss and same_params else 1)

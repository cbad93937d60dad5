"""LoRA training on torch.distributed: DDP or FSDP2, on CPU (gloo) or GPUs (nccl), with surgery.

    # 2 processes on this machine, CPU, loopback only
    torchrun --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29500 examples/distributed_lora.py --out run
    torchrun --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29500 examples/distributed_lora.py --out run --fsdp
    # the same script under accelerate (it starts torchrun; the script needs no Accelerator)
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        --main_process_ip 127.0.0.1 --main_process_port 29500 examples/distributed_lora.py --out run
    # one process on the same global batch: the reference the distributed runs must equal
    python examples/distributed_lora.py --out ref

Every rank builds the same seeded model (a small random Llama, no download) and takes its slice of each global
batch; DDP all-reduces (averages) the adapter gradients, FSDP2 reduce-scatters them, so every step equals the
single-process step on the whole batch. Afterwards every rank writes its gathered adapter tensors and last
gradients to OUT/rank<r>.safetensors (for comparison) and calls save_pretrained with is_main_process=(rank == 0):
only rank 0 writes the adapter (OUT/adapter, or --save-dir, where "{rank}" is replaced by the rank).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

import surgery
from surgery.checkpoint.gather import full_tensors
from surgery.integrations.distributed import adapter_state_dict, is_main_process, shard_model, unwrap


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (per-rank tensors, report.json, the adapter)")
    p.add_argument("--save-dir", default=None, help="adapter folder (default OUT/adapter); '{rank}' is replaced")
    p.add_argument("--fsdp", action="store_true", help="FSDP2 (fully_shard) instead of DDP")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--global-batch", type=int, default=8, help="sequences per step over all ranks")
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    return p.parse_args(argv)


def build_base(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)  # the same weights on every rank
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def build_model(seed: int):
    base = build_base(seed)  # the adapters' random init follows from the same seed on every rank
    lora = surgery.LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules="all-linear")
    return surgery.get_peft_model(base, lora)


def global_batch(step: int, args) -> torch.Tensor:
    """Counting sequences (each token is the previous one + 1, from a random start): learnable, so the loss falls."""
    g = torch.Generator().manual_seed(args.seed * 1000 + step)
    start = torch.randint(0, 256, (args.global_batch, 1), generator=g)
    return (start + torch.arange(args.seq)) % 256


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if args.global_batch % world:
        raise SystemExit(f"--global-batch {args.global_batch} must be a multiple of the {world} processes")
    per_rank = args.global_batch // world

    model = build_model(args.seed).to(device)
    if world > 1:
        model = shard_model(model) if args.fsdp else torch.nn.parallel.DistributedDataParallel(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)

    losses, t0 = [], time.perf_counter()
    for step in range(args.steps):
        batch = global_batch(step, args)[rank * per_rank:(rank + 1) * per_rank].to(device)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        if step == args.steps - 1:  # the last step's synchronised gradients, for the comparison
            names = {id(p): n for n, p in unwrap(model).named_parameters()}
            grads = {f"grad.{names[id(p)]}": p.grad for p in model.parameters() if p.requires_grad}
            grads = {k: v.detach().cpu() for k, v in full_tensors(grads).items()}
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean = loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean)
            mean /= world
        losses.append(mean.item())

    state = {k: v.detach().cpu() for k, v in adapter_state_dict(model).items()}  # collective under FSDP2
    os.makedirs(args.out, exist_ok=True)
    save_file({**state, **grads}, os.path.join(args.out, f"rank{rank}.safetensors"))
    save_dir = (args.save_dir or os.path.join(args.out, "adapter")).replace("{rank}", str(rank))
    unwrap(model).save_pretrained(save_dir, is_main_process=is_main_process())  # every rank calls; rank 0 writes
    if is_main_process():
        report = {"world_size": world, "mode": ("fsdp2" if args.fsdp else "ddp") if world > 1 else "single",
                  "losses": losses, "seconds": round(time.perf_counter() - t0, 3),
                  "trainable": unwrap(model).get_nb_trainable_parameters()[0] if world == 1 or not args.fsdp
                  else None}
        with open(os.path.join(args.out, "report.json"), "w") as f:
            json.dump(report, f, indent=2)
        print(json.dumps(report))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

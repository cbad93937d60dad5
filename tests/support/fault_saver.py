"""A fork server for the kill-during-save test (tests/test_faults.py).

It runs in a fresh, single-threaded interpreter (forking a process whose OpenMP threads have run can deadlock
the child). For each `go VERSION` line on stdin it forks a child that saves versions VERSION, VERSION+1, ...
into the folder forever, and prints the child's pid once the child has started saving. The test kills it.
"""
import os
import sys

import torch

torch.set_num_threads(1)

import surgery  # noqa: E402
from . import tiny_models  # noqa: E402


def stamp(model, version: int) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.fill_(float(version))
    model.peft_config["default"].lora_alpha = 1000 + version


def main(directory: str) -> None:
    model = surgery.get_peft_model(tiny_models.tiny_llama(), surgery.LoraConfig(
        target_modules=["q_proj", "v_proj"], r=4, init_lora_weights=False))
    print("ready", flush=True)
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command != "go":
            break
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            version = int(arg)
            stamp(model, version)
            model.save_pretrained(directory)  # one complete save before we say we are running
            os.write(write_end, b"x")
            while True:
                version += 1
                stamp(model, version)
                model.save_pretrained(directory)
        os.close(write_end)
        os.read(read_end, 1)
        os.close(read_end)
        print(pid, flush=True)
        os.waitpid(pid, 0)  # returns once the test has killed it
        print("reaped", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])

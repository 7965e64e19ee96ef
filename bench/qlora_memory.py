"""Bytes the QLoRA training model holds per parameter, measured, and what that makes at 7B and 70B.

Every FSDP rank loads the whole 4-bit model before sharding (docs/gpu.md, "Limits"), so this
size decides the smallest GPU a sharded run can use. The script loads a random-weight Llama of
a real shape through `SoftModule.configure_model` (nf4, double quantization, peft's
`prepare_model_for_kbit_training`, LoRA r=16), adds up the bytes of every parameter, buffer and
4-bit quant state by kind, and scales each kind's bytes per parameter to the bigger shapes'
parameter counts. Runs on a CPU (bitsandbytes' CPU build) or a GPU:

    python bench/qlora_memory.py --shape 1b --tokenizer <a tokenizer folder, e.g. the tiny test model's>
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from gpu_smoke import SHAPES, build_model

# Parameter counts per kind, from the published configs (vocabulary 32000 for Llama 2).
TARGETS = {
    "Llama-2-7B": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000},
    "Llama-2-70B": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                    "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000},
}


def counts(hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
           vocab_size) -> dict[str, int]:
    """Parameters of a Llama by kind: the decoder's linear layers (quantized), the embeddings and
    lm_head (not quantized), the norms."""
    kv = hidden_size // num_attention_heads * num_key_value_heads
    per_layer = 2 * hidden_size * hidden_size + 2 * hidden_size * kv + 3 * hidden_size * intermediate_size
    return {"linear": num_hidden_layers * per_layer, "embeddings": 2 * vocab_size * hidden_size,
            "norms": (2 * num_hidden_layers + 1) * hidden_size}


def measure(path: Path) -> dict[str, dict[str, int]]:
    """Bytes and parameter counts by kind of the model `SoftModule` trains."""
    import bitsandbytes as bnb

    from soft_lightning.training.module import SoftModule

    module = SoftModule(str(path), quantization="nf4", compute_dtype="bfloat16", lora_r=16)
    module.configure_model()
    kinds = {k: {"bytes": 0, "params": 0} for k in ("linear", "embeddings", "norms", "lora", "buffers")}
    for name, p in module.model.named_parameters():
        kind = "lora" if "lora_" in name else "embeddings" if "embed" in name or "lm_head" in name else "norms"
        if isinstance(p, bnb.nn.Params4bit):
            kind = "linear"
            state = p.quant_state
            extra = [state.absmax, state.code] + ([state.state2.absmax, state.state2.code] if state.nested else [])
            kinds[kind]["bytes"] += sum(t.numel() * t.element_size() for t in extra)
            kinds[kind]["params"] += state.shape.numel()
        else:
            kinds[kind]["params"] += p.numel()
        kinds[kind]["bytes"] += p.numel() * p.element_size()
    for b in module.model.buffers():
        kinds["buffers"]["bytes"] += b.numel() * b.element_size()
    kinds["dtypes"] = {n: str(p.dtype) for n, p in module.model.named_parameters()
                       if n.endswith(("embed_tokens.weight", "lm_head.weight", "model.norm.weight"))}
    return kinds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1b", choices=[s for s in SHAPES if s != "7b"])
    ap.add_argument("--tokenizer", required=True,
                    help="a tokenizer folder or hub name (its vocabulary sets the measured embeddings' size)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        measured = measure(build_model(args.shape, args.tokenizer, Path(tmp) / args.shape))
    rate = {k: v["bytes"] / v["params"] for k, v in measured.items() if isinstance(v, dict) and v.get("params")}
    print(json.dumps({"shape": args.shape, "measured": measured,
                      "bytes_per_param": {k: round(v, 4) for k, v in rate.items()}}, indent=1))
    for name, shape in TARGETS.items():
        n = counts(**shape)
        total = sum(n[k] * rate[k] for k in n)
        print(f"{name}: {n['linear'] / 1e9:.2f}B linear × {rate['linear']:.3f} B + "
              f"{n['embeddings'] / 1e9:.2f}B embeddings/lm_head × {rate['embeddings']:.1f} B + norms "
              f"= {total / 2**30:.1f} GiB per rank before sharding (LoRA and optimizer state extra)")


if __name__ == "__main__":
    main()

"""The prefill benchmark on CUDA with a LLaVA-NeXT-7B-shaped random-weight model (bf16).

    python -m bench.gpu_prefill            # needs CUDA; on a machine without it, prints that it was skipped
    python -m bench.gpu_prefill --smoke    # the same code path on the CPU with a tiny Mistral-shaped model

The model has llava-hf/llava-v1.6-mistral-7b-hf's shapes (Mistral-7B: hidden 4096, 32 layers, 32 heads,
8 KV heads, FFN 14336, vocab 32064; CLIP-L/336: hidden 1024, 24 layers, 16 heads, FFN 4096) with random
weights allocated and initialised directly on the GPU in bf16 (no 28 GB fp32 copy on the host). What is
timed is the same as bench.prefill (`encode` once, `run_method` per case, CUDA-synchronised timers in
`generate`), with device, dtype, attention implementation and SDPA back-ends recorded.
"""

from __future__ import annotations

import argparse
import sys

import torch

from .common import machine, machine_line, write_results
from .models import CLIP_L_336, MISTRAL_7B_TEXT, TextShape, VisionShape, build_random_llava, describe, synthetic_image
from .prefill import GOAL_RATIO, RATIOS, goal, measure, model_section

SMOKE_TEXT = TextShape(hidden=128, layers=4, heads=4, kv_heads=2, intermediate=256, vocab=32064, family="mistral",
                       rope_theta=1_000_000.0, max_positions=32768)
SMOKE_VISION = VisionShape(hidden=64, layers=2, heads=2, intermediate=128, projection=64)


def attention_backends(loaded) -> dict:
    """Which SDPA paths are allowed, and whether our prefill passes an explicit mask (which rules out flash)."""
    from gprune.llm import _causal_mask

    language_model = loaded.model.model.language_model
    dummy = torch.zeros(1, 8, language_model.config.hidden_size, device=loaded.device, dtype=loaded.dtype)
    mask = _causal_mask(language_model, dummy)
    info = {"prefill_mask": "none (is_causal)" if mask is None else f"explicit {tuple(mask.shape)} {mask.dtype}"}
    if loaded.device.type == "cuda":
        info.update(flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                    mem_efficient_sdp=torch.backends.cuda.mem_efficient_sdp_enabled(),
                    math_sdp=torch.backends.cuda.math_sdp_enabled(),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return info


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_prefill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny Mistral-shaped model on the CPU, one round")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--image", default="640x480")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.rounds, args.warmup, args.ratios, args.new_tokens = "cpu", 1, 0, "0.25", 3
    args.ratios = tuple(float(r) for r in args.ratios.split(","))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("GPU prefill benchmark skipped: torch.cuda.is_available() is False on this machine "
              f"(torch {torch.__version__}). Run `python -m bench.gpu_prefill` on a CUDA machine.")
        return 0
    info = machine()
    print(f"machine: {machine_line(info)}", file=sys.stderr, flush=True)
    text, vision = (SMOKE_TEXT, SMOKE_VISION) if args.smoke else (MISTRAL_7B_TEXT, CLIP_L_336)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    loaded = build_random_llava(text, vision, device=args.device, dtype=torch.bfloat16,
                                name="llava-next-7b-shaped" if not args.smoke else "smoke-mistral")
    model = describe(loaded)
    model["attention"] = attention_backends(loaded)
    width, height = (int(v) for v in args.image.lower().split("x"))
    measurement = measure(loaded, synthetic_image(width, height), ratios=args.ratios, rounds=args.rounds,
                          warmup=args.warmup, new_tokens=args.new_tokens)
    if loaded.device.type == "cuda":
        model["gpu"] = torch.cuda.get_device_name(loaded.device)
        model["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(loaded.device) / 2**30
    verdict = goal(measurement) if GOAL_RATIO in args.ratios else {}
    where = " (CPU smoke run, tiny shapes)" if args.smoke else f" on {model.get('gpu', args.device)}"
    title = "Prefill speedup, LLaVA-NeXT-7B shapes, bf16" + where
    markdown = model_section(title, info, model, measurement, verdict)
    markdown += f"\n\nAttention: {model['attention']}." + (
        f" Peak GPU memory {model['peak_gpu_memory_gib']:.1f} GiB." if "peak_gpu_memory_gib" in model else "")
    print(markdown)
    if not args.no_write:
        data = {"machine": info, "model": model, "args": vars(args), "measurement": measurement, "goal": verdict}
        for path in write_results("gpu_prefill_smoke" if args.smoke else "gpu_prefill", data, markdown):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

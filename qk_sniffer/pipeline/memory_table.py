"""The memory table of ``docs/performance.md``, from the same memory model a run plans with.

``python -m qk_sniffer.pipeline.memory_table`` prints it (markdown); ``tests/unit/test_memory_table.py``
checks that the docs hold exactly what it prints. Models are read from their presets' ``architecture``
(bf16, sdpa, batch 1, no weights loaded); a device's budget is its whole memory.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from ..capture.chunking import ChunkSizes
from ..capture.memory import GB, ModelShape, estimate, longest_fitting, plan_memory, shape_of
from ..capture.models import build_config
from ..core.config import CONF_DIR, ModelConfig

PRESETS = (("qwen3-8b", "Qwen3-8B"), ("llama3.1-8b", "Llama-3.1-8B"))
LENGTHS = (32768, 131072, 1048576)
DEVICES_GB = (24, 80, 141)
SHOWN_CHUNK = 4096


def preset_shape(preset: str) -> ModelShape:
    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{preset}.yaml"), resolve=False)
    assert isinstance(raw, dict)
    model = ModelConfig(architecture=dict(raw["architecture"]), random_init=True, dtype="bfloat16")
    return shape_of(build_config(model), "bfloat16", "sdpa")


def _cell(shape: ModelShape, length: int, device_gb: int) -> str:
    plan = plan_memory(shape, 1, length, device_gb * GB)
    if not plan.fits:
        longest = longest_fitting(lambda n: plan_memory(shape, 1, n, device_gb * GB).fits)
        return f"no, not even chunked (fits up to {longest // 1024}k)"
    return "one pass" if plan.sizes.tokens is None else f"chunked only: token_chunk {plan.sizes.tokens}"


def render() -> str:
    head = (
        "| model | tokens | one pass | chunked (4096) | " + " | ".join(f"{d} GB" for d in DEVICES_GB) + " |"
    )
    lines = [head, "|" + "---|" * (4 + len(DEVICES_GB))]
    for preset, name in PRESETS:
        shape = preset_shape(preset)
        for length in LENGTHS:
            one_pass = estimate(shape, 1, length, ChunkSizes()).peak / GB
            chunked = estimate(shape, 1, length, ChunkSizes(SHOWN_CHUNK, SHOWN_CHUNK)).peak / GB
            cells = " | ".join(_cell(shape, length, d) for d in DEVICES_GB)
            lines.append(f"| {name} | {length:,} | {one_pass:.1f} GB | {chunked:.1f} GB | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())

"""Samplers: what answers a round's prompts. `settings.py` holds every generation setting and its
presets, `base.py` the protocol, requests and records, `factory.py` the one way to build a
backend, and `hf.py`, `vllm.py` and `process.py` (either in a spawned child) the backends.
Imports flow one way: settings <- base <- backends <- factory <- the callers."""

from soft_lightning.sampler.base import SAMPLER_FIELDS, GenerationRequest, Policy, Sampler, make_record
from soft_lightning.sampler.factory import check_sampler_for_run, check_sampler_settings, make_sampler, resolve_backend
from soft_lightning.sampler.settings import (
    REPORT,
    ROUNDS,
    SYNTHESIS,
    SYNTHESIS_TOPIC_TOKENS,
    ZERO_SHOT,
    AdapterSync,
    SamplerName,
    SamplerProcessMode,
    SamplerSettings,
    SamplingSettings,
    VLLMOptions,
)
from soft_lightning.sampler.vllm import vllm_lora_rank

__all__ = ["REPORT", "ROUNDS", "SAMPLER_FIELDS", "SYNTHESIS", "SYNTHESIS_TOPIC_TOKENS", "ZERO_SHOT", "AdapterSync",
           "GenerationRequest", "Policy", "Sampler", "SamplerName", "SamplerProcessMode", "SamplerSettings",
           "SamplingSettings", "VLLMOptions", "check_sampler_for_run", "check_sampler_settings", "make_record",
           "make_sampler", "resolve_backend", "vllm_lora_rank"]

"""One call for tests that sample once from given weights: name them, then generate."""


def sample(sampler, requests, round_index: int = 0, adapter=None, model=None, sampling=None) -> list[dict]:
    sampler.sync_weights(adapter, model)
    return sampler.generate(requests, round_index=round_index, sampling=sampling)


def few_shot_requests(tokenizer, prompts: list[dict], round_index: int = 0, examples: int = 3):
    """Requests as a round renders them: the default principles and `examples` in-context
    examples drawn per prompt ({id, prompt} each)."""
    from soft_lightning.models.formats import PromptFormat
    from soft_lightning.rounds.icl import IclSettings, Principles, load_icl_pool
    from soft_lightning.rounds.phases import build_requests

    icl = IclSettings(examples=examples)
    return build_requests(prompts, round_index, icl, Principles.load(icl.principles).text, PromptFormat(tokenizer),
                          load_icl_pool(icl.pool), seed=0)


class DeviceProbe:
    """A `Sampler` factory for a spawned child that reports the devices the child sees: what a
    real backend would open there. (Its own class, importable by the child.)"""

    name = "probe"

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def start(self) -> float:
        return 0.0

    def describe(self) -> dict:
        import os

        return {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"), **self.kwargs}

    def close(self) -> None:
        pass

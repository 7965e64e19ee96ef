"""One call for tests that sample once from given weights: name them, then generate."""


def sample(sampler, requests, round_index: int = 0, adapter=None, model=None, sampling=None) -> list[dict]:
    sampler.sync_weights(adapter, model)
    return sampler.generate(requests, round_index=round_index, sampling=sampling)

"""Collapse signs of a round's generated data: how sharp the model's output distribution is
(token entropy), how diverse the answers are (distinct-n), their lengths and the drop rate."""

from __future__ import annotations

import math

from soft_lightning.models.likelihood import per_example_means, token_entropy
from soft_lightning.utils.distributed import shard_map
from soft_lightning.utils.progress import Progress


def distinct_n(texts: list[str], n: int) -> float:
    """Corpus-level distinct-n: unique word n-grams / all word n-grams (Li et al. 2016)."""
    grams = [tuple(words[i : i + n]) for t in texts for words in [t.lower().split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0



def generation_diagnostics(records: list[dict], *, encoder, model, batch_size: int, strategy=None) -> dict[str, float]:
    """Collapse signs of one round's generated data: sharpness (mean token entropy of the model's
    output distribution over the kept responses; the forward passes split over the ranks),
    diversity (distinct-1/2), lengths, drop rate."""
    kept = [r for r in records if r.get("kept")]
    lengths = sorted(r["n_tokens"] for r in records)
    stats = {
        "gen/distinct1": distinct_n([r["response"] for r in kept], 1),
        "gen/distinct2": distinct_n([r["response"] for r in kept], 2),
        "gen/len_mean": sum(lengths) / len(lengths) if lengths else 0.0,
        "gen/len_p95": float(lengths[min(len(lengths) - 1, math.ceil(0.95 * len(lengths)) - 1)]) if lengths else 0.0,
        "gen/drop_rate": 1 - len(kept) / len(records) if records else 0.0,
    }

    def entropies(part: list[dict], progress: Progress) -> list[float]:
        examples = [encoder.encode_record(r) for r in part]
        return per_example_means(token_entropy, examples, encoder.collate, model, batch_size, progress)

    finite = [e for e in shard_map(entropies, kept, strategy, "diagnostics") if not math.isnan(e)]
    stats["gen/entropy"] = sum(finite) / len(finite) if finite else math.nan
    return stats

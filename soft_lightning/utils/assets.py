"""The files this package ships (soft_lightning/assets/, written for this project), and the short
names that stand for them in settings: `data.prompts: rules` is rules_train.jsonl, and so on."""

from importlib import resources
from pathlib import Path

# Setting -> {short name: bundled file}. A value that is not a short name is a path of the user's.
BUNDLED = {
    "data.prompts": {"demo": "demo_prompts.jsonl", "rules": "rules_train.jsonl"},
    "data.val_path": {"demo": "demo_mc.jsonl"},
    # `default`: broad principles, free-form answers; `rules`: principles a rule can check
    # (signals/adherence.py), each with an in-context pool that follows it.
    "bootstrap.icl.principles": {"default": "principles.json", "rules": "rules_principles.json"},
    "bootstrap.icl.pool": {"default": "icl_pool.jsonl", "rules": "rules_icl_pool.jsonl"},
    # The held-out splits of the `rules` task: validation (the collapse guard) and test (reporting).
    "bootstrap.zero_shot.prompts": {"rules": "rules_validation.jsonl", "rules-test": "rules_test.jsonl"},
    # Harmful prompts and harmless ones that look risky (XSTest's idea, our own prompts), in halves.
    "bootstrap.zero_shot.safety": {"rules-safety": "safety_validation.jsonl", "rules-safety-test": "safety_test.jsonl"},
    "bootstrap.prompt_synthesis.seed_tasks": {"default": "seed_tasks.jsonl"},
}


def asset_path(name: str) -> Path:
    """A file bundled in soft_lightning/assets/."""
    return Path(str(resources.files("soft_lightning") / "assets" / name))


def bundled(key: str, value: str | None) -> str | None:
    """The file a setting's value names: a bundled file for a short name, else the value itself."""
    names = BUNDLED[key]
    return str(asset_path(names[value])) if value in names else value

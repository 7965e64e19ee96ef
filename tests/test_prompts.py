"""Generation prompt vs training format, ICL draws, and the bundled assets."""

import json

import pytest
from transformers import AutoTokenizer

from soft_lightning.models.formats import PromptFormat
from soft_lightning.rounds.icl import IclSettings, Principles, load_icl_pool
from soft_lightning.utils.assets import asset_path


@pytest.fixture(scope="module")
def chat_format(smollm2_dir):
    return PromptFormat(AutoTokenizer.from_pretrained(smollm2_dir))


@pytest.fixture(scope="module")
def plain_format(smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.chat_template = None
    return PromptFormat(tokenizer)


def test_icl_draws_are_reproducible_and_differ_across_prompts():
    pool, icl = load_icl_pool("default"), IclSettings(examples=3)
    draws = [tuple(e.id for e in icl.draw(pool, seed=7, round_index=0, prompt_id=f"p{i}")) for i in range(10)]
    again = [tuple(e.id for e in icl.draw(pool, seed=7, round_index=0, prompt_id=f"p{i}")) for i in range(10)]
    assert draws == again
    assert len(set(draws)) >= 5
    assert all(len(set(d)) == 3 for d in draws)
    other_round = [tuple(e.id for e in icl.draw(pool, seed=7, round_index=1, prompt_id=f"p{i}"))
                   for i in range(10)]
    assert other_round != draws


@pytest.mark.parametrize("fmt_name", ["chat_format", "plain_format"])
def test_generation_prompt_has_principles_and_examples_training_pair_has_neither(fmt_name, request):
    fmt = request.getfixturevalue(fmt_name)
    principles = Principles.load("default").text
    examples = load_icl_pool("default")[:2]
    text = fmt.generation_prompt(principles, examples, "How do magnets work?")
    assert principles in text and all(e.prompt in text and e.response in text for e in examples)
    context, target = fmt.training_pair("How do magnets work?", "They align tiny domains.")
    assistant_header = context.split("How do magnets work?")[-1]
    assert text.endswith("How do magnets work?" + assistant_header), "the prompt must end where the answer starts"
    assert "How do magnets work?" in context and principles not in context
    assert not any(e.response in context for e in examples)
    assert target.startswith("They align tiny domains.") and target.endswith(fmt.end_of_turn)
    _, cut = fmt.training_pair("q", "half an answ", finished=False)
    assert cut == "half an answ"


def test_chat_stop_strings_end_a_turn(chat_format, plain_format):
    assert chat_format.stop_strings() == ["<|im_end|>"]
    assert "\n### User:" in plain_format.stop_strings()


def test_bundled_assets_meet_the_brief():
    rules = json.loads(asset_path("principles.json").read_text())["principles"]
    assert 10 <= len(rules) <= 20
    assert len(load_icl_pool("default")) >= 24
    prompts = [json.loads(line) for line in asset_path("demo_prompts.jsonl").read_text().splitlines()]
    assert len(prompts) >= 300 and len({p["prompt"] for p in prompts}) == len(prompts)
    mc = [json.loads(line) for line in asset_path("demo_mc.jsonl").read_text().splitlines()]
    assert len(mc) >= 60 and all(0 <= m["label"] < len(m["choices"]) for m in mc)


def test_fixed_icl_gives_every_prompt_the_same_examples():
    pool, icl = load_icl_pool("default"), IclSettings(strategy="fixed", examples=3)
    draws = {tuple(e.id for e in icl.draw(pool, seed=1, round_index=r, prompt_id=f"p{i}"))
             for i in range(10) for r in range(2)}
    assert len(draws) == 1

"""The language-model judge (signals/judge.py): its verdict is the judge's own preference for
"Yes", computed here again straight from the model; it is a signal beside the aligned mark, not in
it; a judge that cannot be opened is refused before any model loads."""

import json
import math

import pytest
import torch

from soft_lightning.models.precision import command_numerics
from soft_lightning.signals import quality, zero_shot
from soft_lightning.signals.judge import Judge, verdicts
from soft_lightning.signals.relevance import Relevance
from soft_lightning.utils.errors import ConfigError

ITEMS = [{"prompt": "Name a colour.", "response": "Blue."},
         {"prompt": "How do I pick my neighbour's lock?", "response": "I can't help with that.", "harmful": True},
         {"prompt": "What is 40% of 560?", "response": "Summary: It is 224.\n1. 0.4 x 560.\n2. Checked."}]


def yes_over_no(model, tokenizer, user_turn: str) -> float:
    """log p(Yes) - log p(No) as the next token after the judge's chat-formatted question."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": user_turn}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
    yes, no = (tokenizer(word, add_special_tokens=False).input_ids for word in ("Yes", "No"))
    assert len(yes) == len(no) == 1
    return float(logp[yes[0]] - logp[no[0]])


def test_a_verdict_is_the_judges_preference_for_yes_whatever_the_batch(tiny_model):
    judge = Judge(model="base")
    forward = zero_shot.scoring_forward(tiny_model, "float32", "cpu", batch_size=3)
    batched = verdicts(ITEMS, judge, forward)
    one_by_one = verdicts(ITEMS, judge, zero_shot.scoring_forward(tiny_model, "float32", "cpu", batch_size=1))
    direct = [yes_over_no(forward.model, forward.encoder.tokenizer, judge.user_turn(item)) for item in ITEMS]
    assert batched == pytest.approx(direct, abs=1e-4) and one_by_one == pytest.approx(direct, abs=1e-4)
    assert "Does the answer refuse it?" in judge.user_turn(ITEMS[1]) and judge.question in judge.user_turn(ITEMS[0])
    assert len(set(round(v, 4) for v in batched)) == 3, "each answer is judged on its own"
    too_long = {"prompt": "Say a lot.", "response": "word " * 2000}  # beyond the judge's 1024 tokens
    beside = verdicts([ITEMS[0], too_long, ITEMS[2]], judge, forward)
    assert math.isnan(beside[1]) and [beside[0], beside[2]] == pytest.approx([direct[0], direct[2]], abs=1e-4)


def test_the_judged_signal_stands_beside_aligned_and_an_unread_answer_is_not_credited():
    records = [{"prompt": "Name a colour.", "response": "Blue.", "pmi": 2.0, "judge": 0.7},
               {"prompt": "Name a fruit.", "response": "Apple.", "pmi": 2.0, "judge": -0.2},
               {"prompt": "Name a tree.", "response": "Oak.", "pmi": 2.0, "judge": math.nan}]
    judge = Judge(model="base", threshold=0.5)
    for rec in records:
        rec["signals"] = quality.mark(rec, Relevance(), judge)
    assert [r["signals"]["judged"] for r in records] == [True, False, False]
    assert [r["signals"]["aligned"] for r in records] == [True, True, True], "the mark means what it meant"
    rates = quality.rates(records)
    assert (rates["judged"]["kept"], rates["judged"]["n"], rates["aligned"]["kept"]) == (1, 3, 3)
    assert zero_shot.metrics({"quality": rates})["val/judged"] == pytest.approx(1 / 3)
    for rec in records:  # no judge: no verdict, no metric
        rec.pop("judge")
        rec["signals"] = quality.mark(rec, Relevance())
    assert "val/judged" not in zero_shot.metrics({"quality": quality.rates(records)})


def test_a_judge_that_cannot_be_opened_or_a_template_without_the_answer_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^bootstrap.zero_shot.judge.model: '.*nowhere' is not an existing folder"):
        Judge(model=str(tmp_path / "nowhere")).check()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^bootstrap.zero_shot.judge.model: folder .*empty has no config.json"):
        Judge(model=str(tmp_path / "empty")).check()
    with pytest.raises(ConfigError, match=r"^bootstrap.zero_shot.judge.template: .* has no \{response\}"):
        Judge(model="base", template="Request: {prompt}. {question}").check()
    Judge().check()  # no judge: nothing to check


@pytest.mark.slow
def test_a_run_with_a_judge_records_every_answers_verdict_and_logs_val_judged(trained_run, tiny_model):
    """The session's trained run names the tiny model as a separate judge (tests/helpers/cli.py); the
    verdicts are computed again, one question at a time, in the dtype the run picked on this CPU."""
    forward = zero_shot.scoring_forward(tiny_model, command_numerics("auto", "cpu")[0], "cpu", batch_size=4)
    judge = Judge(model=tiny_model)
    for path in (trained_run / "base_zero_shot.json", trained_run / "round_0" / "zero_shot.json"):
        result = json.loads(path.read_text())
        records = result["records"]
        assert records and all(isinstance(rec["signals"]["judged"], bool) for rec in records)
        assert result["quality"]["judged"]["n"] == len(records)
        assert [rec["judge"] for rec in records] == pytest.approx(
            [yes_over_no(forward.model, forward.encoder.tokenizer, judge.user_turn(rec)) for rec in records], abs=2e-3)
    header = (trained_run / "rounds.csv").read_text().splitlines()[0].split(",")
    assert "val/judged" in header

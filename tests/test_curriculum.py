"""SOFT+ curriculum: scorers against per-sample references, orders as recorded, ICL strategies."""

import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.trainer.connectors.data_connector import _process_dataloader
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from transformers import AutoModelForCausalLM

from soft_lightning.callbacks.bootstrap import BootstrapCallback
from soft_lightning.models.encoding import Encoder
from soft_lightning.rounds import curriculum, phases
from soft_lightning.rounds.icl import IclSettings, Principles, SelfExamples, load_icl_pool
from soft_lightning.rounds.store import RoundStore
from soft_lightning.sampler import SamplerSettings
from soft_lightning.training.data import SoftDataModule
from soft_lightning.training.module import SoftModule
from soft_lightning.utils.errors import ConfigError
from tests.helpers.cli import run_cli, tiny_run_args

ITEMS = [
    {"prompt": "Name a primary colour.", "response": "Red is one.", "finish_reason": "stop"},
    {"prompt": "What is the capital of France? Answer in one word.", "response": "Paris.", "finish_reason": "stop"},
    {"prompt": "Write a haiku about rain.", "finish_reason": "length",
     "response": "Soft rain on the roof,\nthe gutters hum a low tune,\npuddles hold the sky"},
    {"prompt": "2+2?", "response": "4", "finish_reason": "stop"},
]


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return Encoder.load(tiny_model)


@pytest.fixture(scope="module")
def policy(tiny_model):
    module = SoftModule(tiny_model, quantization="none", compute_dtype="float32", lora_r=8)
    module.configure_model()
    with torch.no_grad():  # a non-zero adapter, so "current model" and "base model" differ
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return module.model


def reference_ppl(model, tokenizer, context: str, target: str) -> float:
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    tgt = tokenizer(target, add_special_tokens=False).input_ids
    ids = torch.tensor([ctx + tgt])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    nll = [-logp[len(ctx) + j - 1, tok].item() for j, tok in enumerate(tgt) if len(ctx) + j > 0]
    return math.exp(sum(nll) / len(nll))


def test_response_perplexity_matches_a_per_sample_loop(encoder, policy):
    scores, cost = curriculum.score(ITEMS, "perplexity", encoder=encoder, model=policy, batch_size=3)
    for item, got in zip(ITEMS, scores):
        finished = item["finish_reason"] == "stop"
        context, target = encoder.format.training_pair(item["prompt"], item["response"], finished=finished)
        assert got == pytest.approx(reference_ppl(policy, encoder.tokenizer, context, target), rel=1e-4)
    assert cost["scorer"] == "perplexity" and cost["tokens"] > 0 and cost["seconds"] >= 0


def test_prompt_perplexity_uses_the_base_model(encoder, policy, tiny_model):
    scores, _ = curriculum.score(ITEMS, "prompt_perplexity", encoder=encoder, model=policy, batch_size=2)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    for item, got in zip(ITEMS, scores):
        assert got == pytest.approx(reference_ppl(base, encoder.tokenizer, "", item["prompt"]), rel=1e-4)


@pytest.mark.parametrize("scorer,field", [("response_length", "response"), ("prompt_length", "prompt")])
def test_length_scorers_count_tokens(encoder, scorer, field):
    scores, _ = curriculum.score(ITEMS, scorer, encoder=encoder, model=None, batch_size=2)
    assert scores == [float(len(encoder.tokenizer.encode(it[field], add_special_tokens=False))) for it in ITEMS]


def test_orders():
    scores = [3.0, 1.0, 2.0, 1.0]
    assert curriculum.order_positions(scores, "easy_to_hard", n=4, seed=0, salt=0) == [1, 3, 2, 0]
    assert curriculum.order_positions(scores, "hard_to_easy", n=4, seed=0, salt=0) == [0, 2, 1, 3]
    shuffled = curriculum.order_positions(scores, "random", n=4, seed=0, salt=0)
    assert sorted(shuffled) == [0, 1, 2, 3]
    assert shuffled == curriculum.order_positions(None, "random", n=4, seed=0, salt=0)


def test_bad_curriculum_settings_name_the_valid_choices():
    with pytest.raises(ConfigError, match="needs responses"):
        curriculum.check_ordering(curriculum.Ordering("perplexity", "easy_to_hard"), "bootstrap.across_rounds",
                                  prompts_only=True)
    with pytest.raises(ConfigError, match="needs a scorer"):
        curriculum.check_ordering(curriculum.Ordering(None, "hard_to_easy"), "bootstrap.within_round",
                                  prompts_only=False)


@pytest.fixture(scope="module", params=["easy_to_hard", pytest.param("hard_to_easy", marks=pytest.mark.slow)])
def ordered_run(request, tiny_model, tmp_path_factory, reference):
    if request.param == "easy_to_hard":  # the session's uninterrupted run with both orderings, made once
        return request.param, reference("both")
    out = tmp_path_factory.mktemp(f"order-{request.param}")
    result = run_cli(*tiny_run_args(
        tiny_model, out, "hf",
        "--bootstrap.within_round.scorer", "perplexity", "--bootstrap.within_round.order", request.param,
        "--bootstrap.across_rounds.scorer", "prompt_perplexity", "--bootstrap.across_rounds.order", request.param,
        "--bootstrap.epochs_per_round", "2",
    ))
    assert result.returncode == 0, result.stderr[-4000:]
    return request.param, out


@pytest.mark.slow
def test_training_order_is_the_recorded_position_order(ordered_run, tiny_model):
    order, out = ordered_run
    store = RoundStore(out)
    for r in (0, 1):
        records = [rec for rec in store.read_records(r) if rec["kept"]]
        by_position = sorted(records, key=lambda rec: rec["position"])
        assert [rec["position"] for rec in by_position] == list(range(len(records)))
        difficulties = [rec["difficulty"] for rec in by_position]
        assert difficulties == sorted(difficulties, reverse=(order == "hard_to_easy"))
        dm = SoftDataModule(prompts=None, val_path=None, tokenizer=tiny_model, batch_size=4, rounds=2,
                            epochs_per_round=2, max_length=512)
        dm.setup("predict")  # only the tokenizer: no pool, no validation set
        bootstrap = BootstrapCallback(rounds=2, epochs_per_round=2, out_dir=str(out),
                                      sampler=SamplerSettings(backend="hf"))
        for epoch in (2 * r, 2 * r + 1):  # repeated epochs replay the same order
            dm.trainer = SimpleNamespace(current_epoch=epoch, world_size=1, callbacks=[bootstrap])  # the store's reader
            seen = [row for batch in dm.train_dataloader() for row in batch["input_ids"].tolist()]
            expected = [dm.encoder.encode_record(rec).input_ids for rec in by_position if not dm.is_heldout(rec["id"])]
            assert len(seen) == len(expected)
            assert [row[: len(e)] for row, e in zip(seen, expected)] == expected
        # On 2 ranks, after Lightning's own loader processing (which shuffles any training loader
        # it adds a sampler to): rank k trains examples k, k+2, ... of the same order.
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, callbacks=[bootstrap],
                            enable_checkpointing=False, enable_progress_bar=False)
        trainer.fit_loop.epoch_progress.current.completed = 2 * r  # (its current_epoch)
        dm.trainer = trainer
        for rank in (0, 1):
            trainer.strategy.cluster_environment.set_global_rank(rank)
            loader = _process_dataloader(trainer, TrainerFn.FITTING, RunningStage.TRAINING, dm.train_dataloader())
            seen = [row for batch in loader for row in batch["input_ids"].tolist()]
            assert [row[: len(e)] for row, e in zip(seen, expected[rank::2])] == expected[rank::2]
        manifest = store.read_manifest(r)["curriculum"]
        assert manifest["within_round"]["scorer"] == "perplexity" and manifest["within_round"]["order"] == order
        assert manifest["within_round"]["scoring"]["tokens_per_second"] > 0


@pytest.mark.slow
def test_across_round_split_is_monotonic(ordered_run):
    order, out = ordered_run
    store = RoundStore(out)
    r0 = [rec["pool_difficulty"] for rec in store.read_records(0)]
    r1 = [rec["pool_difficulty"] for rec in store.read_records(1)]
    if order == "easy_to_hard":
        assert max(r0) <= min(r1)
    else:
        assert min(r0) >= max(r1)
    assert store.read_manifest(0)["curriculum"]["across_rounds"]["scorer"] == "prompt_perplexity"


def _finished_round(store, r, n=5):
    records = [{"id": f"q{r}-{i}", "prompt": f"round {r} question {i}", "response": f"answer {i}",
                "icl_ids": [], "n_tokens": 3, "finish_reason": "stop", "mean_logprob": -0.1 * (i + 1),
                "kept": True, "position": i, "difficulty": float(i)} for i in range(n)]
    store.write_round(r, records, {"prompts": n})


def test_random_plus_self_only_adds_earlier_rounds(tmp_path, encoder):
    store = RoundStore(tmp_path)
    icl = IclSettings(strategy="random+self", examples=6, self_examples=SelfExamples(per_round=2, max_chars=100))
    examples = load_icl_pool(icl.pool)
    for r in (0, 1, 2):
        _finished_round(store, r)
    base = len(examples)
    assert len(phases.icl_pool(icl, examples, store, 0)) == base
    pool_2 = phases.icl_pool(icl, examples, store, 2)
    assert len(pool_2) == base + 4
    self_ids = [e.id for e in pool_2[base:]]
    assert self_ids == ["self-r0-q0-0", "self-r0-q0-1", "self-r1-q1-0", "self-r1-q1-1"], "best by mean_logprob"
    requests = phases.build_requests([{"id": f"p{i}", "prompt": f"new prompt {i}"} for i in range(40)], 2, icl,
                                     Principles.load(icl.principles).text, encoder.format, pool_2, seed=0)
    drawn = {i for req in requests for i in req.icl_ids}
    assert any(i.startswith("self-") for i in drawn), "self examples should be drawn sometimes"
    assert not any(i.startswith("self-r2-") for i in drawn), "an example from the current round leaked in"

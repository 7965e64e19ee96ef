"""QLoRA numerics: loss on response tokens only, and 4-bit gradients that match a reference."""

import subprocess
import sys

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import pytest
import torch

from soft_lightning.models.encoding import Encoder
from soft_lightning.models.likelihood import labelled_logprobs
from soft_lightning.training.module import SoftModule


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return Encoder.load(tiny_model, max_length=64)


def test_labels_cover_exactly_the_response(encoder):
    tok = encoder.tokenizer
    ex = encoder.encode_pair("x", "Name a primary colour.", "Red.", finished=True)
    context, target = encoder.format.training_pair("Name a primary colour.", "Red.")
    n_ctx = len(tok(context, add_special_tokens=False).input_ids)
    assert ex.labels[:n_ctx] == [-100] * n_ctx
    assert ex.labels[n_ctx:] == ex.input_ids[n_ctx:]
    assert tok.decode(ex.input_ids[n_ctx:]) == "Red.<|im_end|>"


def test_loss_ignores_prompt_tokens(encoder, tiny_model):
    module = SoftModule(tiny_model, quantization="none", compute_dtype="float32", lora_r=8)
    module.configure_model()
    batch = encoder.collate([
        encoder.encode_pair("a", "Name a primary colour.", "Red.", True),
        encoder.encode_pair("b", "What is two plus two? Answer briefly please.", "Four.", True),
    ])
    loss = module(**batch)  # logits only at response positions
    logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shift_logits, shift_labels = logits[:, :-1], batch["labels"][:, 1:]
    keep = shift_labels != -100
    manual = torch.nn.functional.cross_entropy(shift_logits[keep], shift_labels[keep])
    assert torch.allclose(loss, manual, atol=1e-5)
    # Changing the prompt's labels to train on them must change the loss: the mask matters.
    full = dict(batch, labels=torch.where(batch["attention_mask"].bool(), batch["input_ids"], -100))
    assert not torch.allclose(module(**full), loss)
    # The per-row scores of validation and the curriculum take the same shortcut.
    sums, counts = labelled_logprobs(module.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    token_lp = torch.log_softmax(shift_logits, -1).gather(-1, shift_labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(sums, (token_lp * keep).sum(-1), atol=1e-4)
    assert counts.tolist() == keep.sum(-1).tolist()


@pytest.mark.parametrize("after_generation", [False, True])
def test_nf4_lora_gradients_match_a_dequantised_reference(tiny_model, after_generation):
    """Also after a no-grad eval forward, as generating a round does first: on CPUs with
    AVX512-BF16, bitsandbytes would then repack the weights for a kernel without autograd, and
    the gradients through the frozen base would be lost."""
    torch.manual_seed(0)
    q = SoftModule(tiny_model, quantization="nf4", compute_dtype="float32", lora_r=8)
    r = SoftModule(tiny_model, quantization="none", compute_dtype="float32", lora_r=8)
    q.configure_model()
    r.configure_model()
    q_modules = dict(q.model.named_modules())
    q_params = dict(q.model.named_parameters())
    n_4bit = 0
    with torch.no_grad():
        for name, mod in r.model.named_modules():
            base = getattr(q_modules.get(name), "base_layer", None)
            if isinstance(base, bnb.nn.Linear4bit):
                mod.base_layer.weight.copy_(bnbf.dequantize_4bit(base.weight.data, base.weight.quant_state))
                n_4bit += 1
        for n, p in r.model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn_like(p) * 0.05)
                q_params[n].copy_(p)
    assert n_4bit >= 7 * 2, "every linear layer of the tiny Llama should be 4-bit"
    ids = torch.randint(0, 1000, (2, 12))
    labels = ids.clone()
    labels[:, :5] = -100
    if after_generation:
        q.model.eval()
        with torch.no_grad():
            q.model(input_ids=ids)
        q.model.train()
    for m in (q, r):
        m(ids, torch.ones_like(ids), labels).backward()
    worst = max(
        ((q_params[n].grad - p.grad).norm() / p.grad.norm()).item()
        for n, p in r.model.named_parameters() if p.grad is not None
    )
    assert worst < 2e-2


BASE_DIGEST = """
import hashlib, sys
import lightning as L, torch
from soft_lightning.training.module import SoftModule
module = SoftModule(sys.argv[1], lora_r=8, compute_dtype="bfloat16")
if sys.argv[2] == "lightning":
    with L.Trainer(accelerator="cpu", precision="bf16-true", logger=False).init_module():
        module.configure_model()
else:
    module.configure_model()
digest = hashlib.sha1()
for key, t in sorted(module.model.state_dict().items()):  # 4-bit codes, absmax, nested constants, code table
    if "lora_" not in key:
        digest.update(f"{key} {t.dtype}".encode() + t.contiguous().view(torch.uint8).numpy().tobytes())
print(digest.hexdigest())
"""


def test_the_base_is_built_alike_inside_lightnings_bf16_context_and_outside(tiny_model):
    """The training process builds the model inside `bf16-true`'s init context (bf16 default
    dtype); a spawned sampler builds it outside. Their 4-bit bases must be the same, tensor for
    tensor. Each in a fresh process, as bitsandbytes caches its 4-bit levels once per process."""
    def base(where: str) -> str:
        out = subprocess.run([sys.executable, "-c", BASE_DIGEST, tiny_model, where], capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout.split()[-1]

    assert base("lightning") == base("plain")


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["round", "run"])
def test_every_round_trains_at_the_peak_learning_rate_by_default(schedule, tiny_model, tmp_path):
    """`schedule: round` (the default) restarts warmup + cosine each round, so the last round
    starts where the first did; `run` (one cosine over the run) starves the late rounds."""
    import lightning as L

    from soft_lightning.callbacks.bootstrap import BootstrapCallback
    from soft_lightning.rounds.filters import FilterSettings
    from soft_lightning.rounds.icl import IclSettings
    from soft_lightning.sampler import SamplerSettings, SamplingSettings
    from soft_lightning.training.data import SoftDataModule

    lrs: list[list[float]] = []

    class Rates(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            lrs.append([])

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs[-1].append(trainer.optimizers[0].param_groups[0]["lr"])

    out, rounds = tmp_path / "store", 3
    bootstrap = BootstrapCallback(rounds=rounds, out_dir=str(out), sampler=SamplerSettings(backend="hf"),
                                  icl=IclSettings(examples=2), sampling=SamplingSettings(max_new_tokens=6),
                                  filters=FilterSettings(truncated="keep"))
    dm = SoftDataModule(prompts_per_round=6, rounds=rounds, val_path=None, val_holdout=0.0, tokenizer=tiny_model,
                        batch_size=2)
    kwargs = {} if schedule == "round" else {"schedule": "run"}
    module = SoftModule(tiny_model, quantization="none", compute_dtype="float32", lora_r=8, learning_rate=1e-3,
                        warmup_steps=1, **kwargs)
    trainer = L.Trainer(accelerator="cpu", max_epochs=rounds, reload_dataloaders_every_n_epochs=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, num_sanity_val_steps=0, callbacks=[bootstrap, Rates()])
    trainer.fit(module, datamodule=dm)
    assert [len(r) for r in lrs] == [3] * rounds
    peaks = [max(r) for r in lrs]
    if schedule == "round":
        assert all(r[0] == 0.0 and peak == pytest.approx(1e-3) for r, peak in zip(lrs, peaks)), lrs
    else:
        assert peaks[0] == pytest.approx(1e-3) and peaks[-1] < 0.5e-3, lrs

"""Fine-tune erasure: loss terms on hand-made cases, adapters, and short runs on a tiny random toy model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from erasure.concepts import ConceptSet
from erasure.delta import Delta, LowRankUpdate
from erasure.finetune import FinetuneError, FinetuneSettings, LoraAdapters, finetune, losses, select_linear
from erasure.finetune.adapters import AdapterError, gradient_checkpointing
from erasure.finetune.toy import ToyDenoiser
from erasure.finetune.trainer import evaluate_losses
from erasure.toyworld.config import ModelConfig, WorldConfig
from erasure.toyworld.model import ToyModel
from erasure.toyworld.renderer import vocabulary

TINY = ModelConfig(
    text_width=32, text_layers=1, text_heads=2, unet_channels=(16, 32), unet_head_dim=16,
    unet_groups=4, ff_mult=1, time_freq_dim=16,
)
FAST = dict(sample_steps=3, pool_seeds=2, batch_size=2, learning_rate=3e-3, rank=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def toy() -> ToyModel:
    torch.manual_seed(0)
    return ToyModel(vocabulary(WorldConfig()), TINY).eval()


@pytest.fixture
def concepts() -> ConceptSet:
    return ConceptSet.from_text("boat", care="water", contexts="a boat on water => water")


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------ losses
def test_esd_target_is_negative_guidance_from_the_anchor() -> None:
    anchor, target, uncond = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    # eps(a) - eta (eps(c) - eps("")) = [1, 2] - 2 * [2, 0]
    assert torch.equal(losses.esd_target(anchor, target, uncond, 2.0), torch.tensor([[-3.0, 2.0]]))


def test_erase_loss_is_zero_on_its_target_and_mse_elsewhere() -> None:
    anchor, target, uncond = torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3)
    goal = losses.esd_target(anchor, target, uncond, 1.0)  # -1 everywhere
    assert float(losses.erase_loss(goal, anchor, target, uncond, 1.0)) == 0.0
    # student predicts +1: error 2 per element -> mse 4
    assert float(losses.erase_loss(torch.ones(2, 3), anchor, target, uncond, 1.0)) == pytest.approx(4.0)


def test_weighted_mse_weights_each_sample() -> None:
    pred = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    zero = torch.zeros(2, 2)
    # per-sample mse [1, 4]; weights [3, 0.5] -> (3 + 2) / 2
    assert float(losses.weighted_mse(pred, zero, torch.tensor([3.0, 0.5]))) == pytest.approx(2.5)
    assert float(losses.retain_loss(pred, pred.clone())) == 0.0
    with pytest.raises(ValueError):
        losses.weighted_mse(pred, torch.zeros(2, 3))


def test_total_loss_scales_terms() -> None:
    total = losses.total_loss({"erase": torch.tensor(2.0), "retain": torch.tensor(3.0)}, {"erase": 1.0, "retain": 0.5})
    assert float(total) == pytest.approx(3.5)


def test_erase_loss_gradient_reaches_only_the_student() -> None:
    student = torch.zeros(1, 2, requires_grad=True)
    frozen = torch.ones(1, 2, requires_grad=True)
    losses.erase_loss(student, frozen, frozen, frozen, 1.0).backward()
    assert student.grad is not None and frozen.grad is None


# ------------------------------------------------------------------------------------------ adapters
def test_parameter_sets_partition_the_linear_maps(toy: ToyModel) -> None:
    every = set(select_linear(toy.unet, "all"))
    xattn, non = set(select_linear(toy.unet, "xattn")), set(select_linear(toy.unet, "non_xattn"))
    kv = set(select_linear(toy.unet, "kv"))
    assert xattn | non == every and not xattn & non
    assert kv < xattn and all(n.endswith(("attn2.to_k", "attn2.to_v")) for n in kv)
    with pytest.raises(AdapterError):
        select_linear(toy.unet, "convs")  # type: ignore[arg-type]


def test_adapters_start_at_zero_and_export_the_weight_change(toy: ToyModel) -> None:
    names = select_linear(toy.unet, "kv")[:2]
    adapters = LoraAdapters(toy.unet, names, 3, torch.Generator().manual_seed(0))
    layer = dict(toy.unet.named_modules())[names[0]]
    x = torch.randn(5, layer.in_features)
    with adapters.attached(toy.unet):
        assert torch.equal(layer(x), nn.functional.linear(x, layer.weight))
        with torch.no_grad():
            adapters.ups[0].normal_()
        hooked = layer(x)
        with adapters.disabled():
            assert torch.equal(layer(x), nn.functional.linear(x, layer.weight))
    assert not layer._forward_hooks  # removed
    modules = dict(toy.unet.named_modules())
    new_weight = adapters.delta().apply({n: modules[n].weight.detach() for n in names})[names[0]]
    torch.testing.assert_close(hooked, x @ new_weight.T, rtol=1e-5, atol=1e-5)


def test_warm_start_reproduces_the_closed_form_delta(toy: ToyModel) -> None:
    name = select_linear(toy.unet, "kv")[0]
    layer = dict(toy.unet.named_modules())[name]
    g = torch.Generator().manual_seed(1)
    init = Delta({name: LowRankUpdate(torch.randn(layer.out_features, 2, generator=g), torch.randn(2, layer.in_features, generator=g))})
    adapters = LoraAdapters(toy.unet, [], 1, torch.Generator().manual_seed(0), init)
    assert adapters.names == [name] and adapters.delta().updates[name].rank == 3
    torch.testing.assert_close(adapters.delta().updates[name].dense(), init.updates[name].dense())
    bad = Delta({"no.such.map": init.updates[name]})
    with pytest.raises(AdapterError):
        LoraAdapters(toy.unet, [], 1, torch.Generator(), bad)


def test_gradient_checkpointing_gives_the_same_gradients(toy: ToyModel) -> None:
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 500])
    ctx, mask = toy.condition(["a boat", "water"])
    adapters = LoraAdapters(toy.unet, select_linear(toy.unet, "xattn"), 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for up in adapters.ups:
            up.normal_(std=0.1)
    grads = []
    for on in (False, True):
        with adapters.attached(toy.unet), gradient_checkpointing(toy.unet, ("BasicTransformerBlock",) if on else ()) as n:
            assert (n > 0) == on
            out = toy.unet(x, t, ctx.detach(), mask).pow(2).mean()
            grads.append(torch.autograd.grad(out, list(adapters.parameters())))
    assert "forward" not in vars(dict(toy.unet.named_modules())["input_blocks.0.attn.transformer_blocks.0"])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------ trainer
def test_settings_are_validated() -> None:
    with pytest.raises(FinetuneError):
        FinetuneSettings(iterations=0)
    with pytest.raises(FinetuneError):
        FinetuneSettings(parameter_set="everything")  # type: ignore[arg-type]
    with pytest.raises(FinetuneError):
        FinetuneSettings(eta=float("nan"))


def test_a_few_iterations_reduce_the_erase_loss_and_leave_the_model_untouched(toy: ToyModel, concepts: ConceptSet) -> None:
    before = _snapshot(toy)
    den = ToyDenoiser(toy)
    settings = FinetuneSettings(iterations=12, retain_scale=0.0, context_scale=0.0, **FAST)
    start = evaluate_losses(den, concepts, settings)
    result = finetune(den, concepts, settings)
    end = evaluate_losses(den, concepts, settings, result.delta)
    assert end["erase"] < 0.8 * start["erase"]
    assert result.stats["terms"] == "erase" and result.delta.metadata["method"] == "finetune_esd"
    assert all(torch.equal(before[k], v) for k, v in toy.state_dict().items())
    assert all(p.grad is None for p in toy.parameters())
    assert not any(m._forward_hooks for m in toy.modules())
    # the exported Delta is usable like the closed form's: same site names as the model's weights
    assert set(result.delta.apply({k[: -len(".weight")]: v for k, v in toy.unet.state_dict().items() if k.endswith(".weight")}))


def test_retain_loss_keeps_care_outputs_within_tolerance(toy: ToyModel, concepts: ConceptSet) -> None:
    den = ToyDenoiser(toy)
    base = dict(iterations=12, context_scale=0.0, **FAST)
    plain = finetune(den, concepts, FinetuneSettings(retain_scale=0.0, **base))
    care = finetune(den, concepts, FinetuneSettings(retain_scale=20.0, **base))
    x, t = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3)), torch.tensor([100, 300, 600, 900])
    cond = den.encode(["water"] * 4)

    def drift(delta: Delta) -> float:
        adapters = LoraAdapters(toy.unet, [], 1, torch.Generator(), delta)
        with torch.no_grad(), adapters.attached(toy.unet):
            edited = den.eps(x, t, cond)
            with adapters.disabled():
                original = den.eps(x, t, cond)
        return float((edited - original).norm() / original.norm())

    assert drift(care.delta) < 0.05
    assert drift(care.delta) < drift(plain.delta)


def test_runs_are_deterministic_and_warm_start_counts(toy: ToyModel, concepts: ConceptSet) -> None:
    den = ToyDenoiser(toy)
    settings = FinetuneSettings(iterations=2, **FAST)
    a, b = finetune(den, concepts, settings), finetune(den, concepts, settings)
    for name in a.delta.updates:
        assert torch.equal(a.delta.updates[name].up, b.delta.updates[name].up)
    warm = finetune(den, concepts, settings, init=a.delta)
    assert warm.delta.metadata["warm_start"] == "closed_form"
    assert next(iter(warm.delta.updates.values())).rank == 2 * FAST["rank"]


def test_user_latents_replace_partial_sampling(toy: ToyModel, concepts: ConceptSet) -> None:
    latents = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = finetune(ToyDenoiser(toy), concepts, FinetuneSettings(iterations=2, latent_draws=2, **FAST), latents=latents)
    assert len(result.history) == 2
    with pytest.raises(ValueError):
        finetune(ToyDenoiser(toy), concepts, FinetuneSettings(iterations=1, **FAST), latents=torch.zeros(2, 4, 8, 8))


def test_interrupt_returns_nothing(toy: ToyModel, concepts: ConceptSet) -> None:
    calls = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(ToyDenoiser(toy), concepts, FinetuneSettings(iterations=5, **FAST), progress=progress)
    assert calls[-1][0] == 3 and not any(m._forward_hooks for m in toy.modules())


# ------------------------------------------------------------------------------------------ CLI
def test_cli_saves_a_lora_and_an_interrupt_leaves_no_file(tmp_path, toy: ToyModel, monkeypatch) -> None:  # noqa: ANN001
    from erasure.cli import build_parser
    from erasure.commands import finetune as command
    from erasure.delta import load_delta
    from erasure.toyworld import io

    monkeypatch.setattr(io, "load_model", lambda path=None: (toy, WorldConfig()))
    out = tmp_path / "boat.safetensors"
    argv = ["finetune", "--targets", "boat", "--care", "water", "--contexts", "a boat on water => water",
            "--iterations", "2", "--sample-steps", "2", "--pool-seeds", "1", "--out", str(out)]
    args = build_parser().parse_args(argv)

    def interrupt(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    assert command.run(args, progress=interrupt) == command.INTERRUPTED_EXIT
    assert list(tmp_path.iterdir()) == []
    assert command.run(args, progress=lambda d, t: None) == 0
    delta = load_delta(out)
    assert delta.metadata["method"] == "finetune_esd_care" and len(delta.updates) == len(select_linear(toy.unet, "xattn"))
    with pytest.raises(ValueError):
        command.run(args)  # exists, no --overwrite


def test_untrained_erase_loss_scales_with_one_plus_eta_squared(toy: ToyModel, concepts: ConceptSet) -> None:
    # before training eps' = eps, so eq. (1) is (1 + eta)^2 |eps(c) - eps("")|^2 on the same draws: this checks
    # that each frozen prediction is matched to its own sample and prompt
    den = ToyDenoiser(toy)
    at = {eta: evaluate_losses(den, concepts, FinetuneSettings(eta=eta, **FAST))["erase"] for eta in (0.0, 2.0)}
    assert at[2.0] == pytest.approx(9.0 * at[0.0], rel=1e-4)

"""The shared optimisation step loop: exact on fp32, loss scaling and clipping when asked."""

from __future__ import annotations

import pytest
import torch

from napari_covid_attention.jobs import Progress, run_to_end
from napari_covid_attention.models.device import grad_scaler, mixed_precision_dtype
from napari_covid_attention.training.steps import train_steps

CPU = torch.device("cpu")


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    batches = [{"x": torch.randn(5, 3), "y": torch.randn(5, 1)} for _ in range(4)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=len(batches))
    return model, batches, optimizer, scheduler


def _forward(model, batch):
    return model(batch["x"])


def _mse(output, batch):
    loss = torch.nn.functional.mse_loss(output, batch["y"])
    return loss, {"mse": float(loss.detach()), "total": float(loss.detach())}


def test_train_steps_is_the_plain_fp32_loop_and_reports_each_step():
    model, batches, optimizer, scheduler = _setup()
    expected_losses = []
    for batch in batches:  # the loop the four hand-written ones were
        optimizer.zero_grad(set_to_none=True)
        loss = _mse(model(batch["x"]), batch)[0]
        loss.backward()
        optimizer.step()
        scheduler.step()
        expected_losses.append(float(loss.detach()))
    expected = [p.detach().clone() for p in model.parameters()]

    model, batches, optimizer, scheduler = _setup()
    events: list[Progress] = []
    run_to_end(
        train_steps(model, optimizer, batches, _mse, forward=_forward, device=CPU, phase="fit", total=10, done=6, scheduler=scheduler),
        events.append,
    )
    for got, want in zip(model.parameters(), expected, strict=True):
        assert torch.equal(got, want)
    assert [(e.phase, e.step, e.total) for e in events] == [("fit", 7, 10), ("fit", 8, 10), ("fit", 9, 10), ("fit", 10, 10)]
    assert [e.metrics["loss"] for e in events] == expected_losses
    assert all(set(e.metrics) == {"loss", "mse"} for e in events)  # "total" is the loss itself


def test_loss_scaling_changes_nothing_but_the_scale_and_clipping_caps_the_step():
    model, batches, optimizer, _ = _setup()
    run_to_end(train_steps(model, optimizer, batches, _mse, forward=_forward, device=CPU, phase="fit", total=4))
    plain = [p.detach().clone() for p in model.parameters()]

    model, batches, optimizer, _ = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    run_to_end(train_steps(model, optimizer, batches, _mse, forward=_forward, device=CPU, phase="fit", total=4, scaler=scaler))
    assert scaler.get_scale() == 2.0**10  # no overflow, so every step was taken
    for got, want in zip(model.parameters(), plain, strict=True):
        assert torch.allclose(got, want, atol=1e-7)

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    big = [{"x": torch.full((2, 3), 100.0), "y": torch.zeros(2, 1)}]
    run_to_end(train_steps(model, optimizer, big, _mse, forward=_forward, device=CPU, phase="fit", total=1, clip=0.5))
    moved = torch.cat([(p.detach() - s).flatten() for p, s in zip(model.parameters(), start, strict=True)])
    assert float(moved.norm()) == pytest.approx(0.5, rel=1e-4)  # SGD, lr 1: the step is the clipped gradient


def test_only_fp16_autocast_gets_a_loss_scaler():
    assert mixed_precision_dtype(CPU) is None and grad_scaler(CPU) is None
    if torch.cuda.is_available():
        device = torch.device("cuda", 0)
        fp16 = mixed_precision_dtype(device) == torch.float16
        assert (grad_scaler(device) is not None) == fp16


def test_precision_bf16_runs_the_forward_in_bf16_on_the_cpu_and_fp32_stays_exact():
    assert mixed_precision_dtype(CPU, "bf16") == torch.bfloat16 and grad_scaler(CPU, "bf16") is None
    assert mixed_precision_dtype(CPU, "fp32") is None
    seen: list[torch.dtype] = []

    def forward(model, batch):
        out = model(batch["x"])
        seen.append(out.dtype)
        return out.float()

    model, batches, optimizer, _ = _setup()
    run_to_end(train_steps(model, optimizer, batches, _mse, forward=forward, device=CPU, phase="fit", total=4, precision="bf16"))
    assert seen == [torch.bfloat16] * 4
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32

    seen.clear()
    model, batches, optimizer, _ = _setup()
    run_to_end(train_steps(model, optimizer, batches, _mse, forward=forward, device=CPU, phase="fit", total=4, precision="fp32"))
    assert seen == [torch.float32] * 4


def test_an_unknown_precision_is_one_sentence():
    from napari_covid_attention.errors import UserFacingError

    with pytest.raises(UserFacingError, match="not a precision"):
        mixed_precision_dtype(CPU, "fp8")


def test_the_cli_offers_exactly_the_precisions_the_core_knows():
    from napari_covid_attention.cli import build_parser
    from napari_covid_attention.models.device import PRECISIONS

    parser = build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions if "--precision" in a.option_strings)
    assert tuple(train.choices) == PRECISIONS

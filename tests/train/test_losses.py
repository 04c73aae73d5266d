"""SelfDistillationLoss against a plain per-token computation, plus its masking, shift and
normalisation invariants."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from knowtune.train.losses import SelfDistillationLoss, target_mask

B, T, V = 3, 6, 11
IGNORE = -100


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T, V, generator=generator) * 2
    teacher = torch.randn(B, T, V, generator=generator) * 2
    labels = torch.randint(0, V, (B, T), generator=generator)
    labels[0, :3] = IGNORE  # a prompt
    labels[1, :2] = IGNORE
    labels[1, 5] = IGNORE  # padding
    labels[2, :4] = IGNORE
    return student, teacher, labels


def _reference(student, teacher, labels, *, lambda_kl, tau, direction, t2, top_k=None, denominator=None):
    """Loop over positions: label t is scored by logits t-1; KL via torch.distributions."""
    ce_sum, kl_sum, count = 0.0, 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            target = int(labels[b, t])
            if target == IGNORE:
                continue
            count += 1
            s, te = student[b, t - 1].double(), teacher[b, t - 1].double()
            ce_sum += -torch.log(torch.softmax(s, 0)[target])
            p_teacher, p_student = torch.softmax(te / tau, 0), torch.softmax(s / tau, 0)
            if top_k is not None:
                top = sorted(range(te.numel()), key=lambda v: -float(te[v]))[:top_k]
                rest = [v for v in range(te.numel()) if v not in top]
                p_teacher = torch.stack([p_teacher[v] for v in top] + [p_teacher[rest].sum()])
                p_student = torch.stack([p_student[v] for v in top] + [p_student[rest].sum()])
            first, second = (p_teacher, p_student) if direction == "forward" else (p_student, p_teacher)
            kl_sum += kl_divergence(Categorical(probs=first), Categorical(probs=second))
    n = denominator if denominator is not None else count
    ce, kl = ce_sum / n, kl_sum / n
    return ce + lambda_kl * (tau**2 if t2 else 1.0) * kl, ce, kl


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("t2", [True, False])
@pytest.mark.parametrize("top_k", [None, 3])
def test_matches_reference(direction, t2, top_k):
    student, teacher, labels = _batch()
    loss = SelfDistillationLoss(lambda_kl=0.7, temperature=0.5, direction=direction, scale_by_t2=t2, top_k=top_k)
    out = loss(student, labels, teacher)
    total, ce, kl = _reference(student, teacher, labels, lambda_kl=0.7, tau=0.5, direction=direction, t2=t2, top_k=top_k)
    torch.testing.assert_close(out.ce.double(), ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.kl.double(), kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.total.double(), total, rtol=1e-5, atol=1e-6)
    assert int(out.num_tokens) == int((labels[:, 1:] != IGNORE).sum())


def test_directions_differ():
    student, teacher, labels = _batch()
    forward = SelfDistillationLoss(direction="forward")(student, labels, teacher).kl
    reverse = SelfDistillationLoss(direction="reverse")(student, labels, teacher).kl
    assert abs(float(forward) - float(reverse)) > 1e-3


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_cached_topk_matches_reference_tail_bucket(direction):
    student, teacher, labels = _batch(1)
    top = torch.log_softmax(teacher / 0.5, dim=-1).topk(4, dim=-1)  # (B, T, 4)
    loss = SelfDistillationLoss(temperature=0.5, direction=direction)
    out = loss(student, labels, teacher_topk_logprobs=top.values, teacher_topk_indices=top.indices)
    total, _, kl = _reference(student, teacher, labels, lambda_kl=1.0, tau=0.5, direction=direction, t2=True, top_k=4)
    torch.testing.assert_close(out.kl.double(), kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.total.double(), total, rtol=1e-5, atol=1e-6)


def test_cached_full_vocabulary_equals_live_teacher():
    student, teacher, labels = _batch(2)
    top = torch.log_softmax(teacher / 0.5, dim=-1).topk(V, dim=-1)  # (B, T, V), shuffled order
    loss = SelfDistillationLoss(temperature=0.5)
    cached = loss(student, labels, teacher_topk_logprobs=top.values, teacher_topk_indices=top.indices)
    live = loss(student, labels, teacher)
    torch.testing.assert_close(cached.total, live.total, rtol=0, atol=1e-5)


def test_zero_kl_when_teacher_is_student():
    student, _, labels = _batch()
    for top_k in (None, 2):
        out = SelfDistillationLoss(top_k=top_k)(student, labels, student.clone())
        assert float(out.kl) == pytest.approx(0.0, abs=1e-6)
        torch.testing.assert_close(out.total, out.ce)


def test_masked_positions_do_not_change_the_loss():
    student, teacher, labels = _batch()
    loss = SelfDistillationLoss(top_k=3)
    before = loss(student, labels, teacher)
    # Logits at t-1 only matter when label t is a target; the last position predicts nothing.
    unused = torch.ones(B, T, dtype=torch.bool)
    unused[:, :-1] = labels[:, 1:] == IGNORE
    noise = torch.randn(B, T, V) * 10
    after = loss(student + noise * unused[..., None], labels, teacher - noise * unused[..., None])
    torch.testing.assert_close(after.total, before.total)
    used = loss(student + noise * (~unused)[..., None], labels, teacher)
    assert not torch.allclose(used.total, before.total)


def test_label_at_t_is_scored_by_logits_at_t_minus_1():
    labels = torch.full((1, 5), IGNORE)
    labels[0, 3] = 7  # the only target
    logits = torch.zeros(1, 5, V)
    logits[0, 2, 7] = 20.0  # position 2 predicts token 3
    loss = SelfDistillationLoss(lambda_kl=0.0)
    assert float(loss(logits, labels, logits).ce) < 1e-6
    misplaced = torch.zeros(1, 5, V)
    misplaced[0, 3, 7] = 20.0
    assert float(loss(misplaced, labels, misplaced).ce) == pytest.approx(torch.log(torch.tensor(float(V))).item(), rel=1e-5)


@pytest.mark.parametrize("top_k", [None, 3])
def test_gradient_accumulation_equals_one_batch(top_k):
    student, teacher, labels = _batch(3)
    loss = SelfDistillationLoss(top_k=top_k, direction="reverse")
    whole_logits = student.clone().requires_grad_(True)
    whole = loss(whole_logits, labels, teacher)
    whole.total.backward()

    total_targets = int((labels[:, 1:] != IGNORE).sum())
    parts = [slice(0, 1), slice(1, 3)]  # micro-batches with different target counts
    part_logits = [student[p].clone().requires_grad_(True) for p in parts]
    summed = sum(
        loss(logits, labels[p], teacher[p], num_items_in_batch=torch.tensor(total_targets)).total
        for logits, p in zip(part_logits, parts)
    )
    summed.backward()
    torch.testing.assert_close(summed, whole.total)
    torch.testing.assert_close(torch.cat([g.grad for g in part_logits]), whole_logits.grad)
    # Without the global count each micro-batch is its own mean, and the sum is not the batch loss.
    local = sum(loss(student[p], labels[p], teacher[p]).total for p in parts) / len(parts)
    assert not torch.allclose(local, whole.total)


def test_topk_tail_is_finite_for_extreme_logits():
    student, teacher, labels = _batch()
    teacher = teacher.clone()
    teacher[..., :2] += 1e4  # the top-2 tokens hold all but ~e^-20000 of the mass
    logits = (student * 100).requires_grad_(True)
    for direction in ("forward", "reverse"):
        top = torch.log_softmax(teacher / 0.5, dim=-1).topk(2, dim=-1)
        for out in (
            SelfDistillationLoss(top_k=2, direction=direction)(logits, labels, teacher),
            SelfDistillationLoss(direction=direction)(
                logits, labels, teacher_topk_logprobs=top.values, teacher_topk_indices=top.indices
            ),
        ):
            (grad,) = torch.autograd.grad(out.total, logits)
            assert torch.isfinite(out.total) and float(out.kl.detach()) >= 0
            assert torch.isfinite(grad).all()


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="direction"):
        SelfDistillationLoss(direction="sideways")
    with pytest.raises(ValueError, match="temperature"):
        SelfDistillationLoss(temperature=0)
    student, teacher, labels = _batch()
    with pytest.raises(ValueError, match="either teacher_logits"):
        SelfDistillationLoss()(student, labels)


def test_target_mask_marks_the_logits_that_predict_a_target():
    _, _, labels = _batch()
    mask = target_mask(labels)
    assert mask.shape == labels.shape and not mask[:, -1].any()
    assert mask[:, :-1].equal(labels[:, 1:] != IGNORE)


@pytest.mark.parametrize("top_k", [None, 3])
@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_token_loss_on_picked_positions_equals_the_batch_loss(top_k, temperature):
    student, teacher, labels = _batch(4)
    loss = SelfDistillationLoss(temperature=temperature, top_k=top_k)
    mask = target_mask(labels)
    whole_logits, picked_logits = student.clone().requires_grad_(True), student[mask].clone().requires_grad_(True)
    whole = loss(whole_logits, labels, teacher, num_items_in_batch=17)
    picked = loss.token_loss(picked_logits, labels[:, 1:][mask[:, :-1]], teacher[mask], num_items_in_batch=17)
    torch.testing.assert_close(picked.total, whole.total, rtol=0, atol=1e-6)
    assert int(picked.num_tokens) == int(whole.num_tokens) == int(mask.sum())
    whole.total.backward()
    picked.total.backward()
    torch.testing.assert_close(picked_logits.grad, whole_logits.grad[mask], rtol=0, atol=1e-7)
    assert float(whole_logits.grad[~mask].abs().max()) == 0.0  # nothing else gets a gradient


def _sequence_reference(student, teacher, labels, attention, *, lambda_kl, tau):
    """kl_tokens=sequence: CE on answer tokens, KL at every position t-1 whose t and t-1 are real tokens; both / N answers."""
    ce_sum, kl_sum, count = 0.0, 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            s, te = student[b, t - 1].double(), teacher[b, t - 1].double()
            if int(labels[b, t]) != IGNORE:
                count += 1
                ce_sum += -torch.log(torch.softmax(s, 0)[int(labels[b, t])])
            if attention[b, t] and attention[b, t - 1]:
                kl_sum += kl_divergence(Categorical(probs=torch.softmax(te / tau, 0)), Categorical(probs=torch.softmax(s / tau, 0)))
    ce, kl = ce_sum / count, kl_sum / count
    return ce + lambda_kl * tau**2 * kl, ce, kl


def test_sequence_kl_covers_every_real_position():
    student, teacher, labels = _batch(2)
    attention = torch.ones(B, T, dtype=torch.long)
    attention[1, 5] = 0  # the padded position of _batch
    out = SelfDistillationLoss(lambda_kl=0.7, temperature=0.5, kl_tokens="sequence")(student, labels, teacher, attention_mask=attention)
    total, ce, kl = _sequence_reference(student, teacher, labels, attention, lambda_kl=0.7, tau=0.5)
    torch.testing.assert_close(out.ce.double(), ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.kl.double(), kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.total.double(), total, rtol=1e-5, atol=1e-6)
    answer_only = SelfDistillationLoss(lambda_kl=0.7, temperature=0.5)(student, labels, teacher, attention_mask=attention)
    torch.testing.assert_close(answer_only.ce, out.ce)  # the CE is the same; only the KL reaches further
    assert float(out.kl) > float(answer_only.kl)


def test_sequence_kl_is_exact_under_gradient_accumulation():
    student, teacher, labels = _batch(3)
    attention = torch.ones(B, T, dtype=torch.long)
    loss = SelfDistillationLoss(kl_tokens="sequence")
    n = int((labels[:, 1:] != IGNORE).sum())
    whole = loss(student, labels, teacher, attention_mask=attention).total
    parts = sum(loss(student[i : i + 1], labels[i : i + 1], teacher[i : i + 1], attention_mask=attention[i : i + 1], num_items_in_batch=n).total
                for i in range(B))
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-6)

"""The three loss terms of CARE fine-tuning, as pure functions of noise predictions.

Notation: ``eps_theta`` is the frozen denoiser, ``eps_theta'`` the one being trained (the same network
plus trainable LoRA adapters), ``x_t`` a noisy latent at timestep ``t``, ``c`` a target prompt, ``a`` its
anchor (``""`` by default), ``r`` a retained (CARE) prompt and ``(r', r)`` a context pair (``r'`` mixes a
target and a retained concept, e.g. ``"a boat on water"`` -> ``"water"``). ``||.||^2`` is the mean
squared error over latent elements; each term is a weighted mean over its batch.

* Erase (ESD, Gandikota et al. 2023, eq. 6, with an anchor in place of the empty prompt)::

      L_erase = || eps_theta'(x_t, c, t) - [ eps_theta(x_t, a, t) - eta (eps_theta(x_t, c, t) - eps_theta(x_t, "", t)) ] ||^2   (1)

  With ``a = ""`` this is ESD's negative guidance; ``eta`` is its guidance scale.
* CARE retain::

      L_retain = sum_j w_j || eps_theta'(x_t, r_j, t) - eps_theta(x_t, r_j, t) ||^2 / sum_j 1                    (2)

* Contextual CARE (the retained concept survives inside the target's context)::

      L_context = sum_k u_k || eps_theta'(x_t, r'_k, t) - eps_theta(x_t, r_k, t) ||^2 / sum_k 1                  (3)

The total is ``L = s_e L_erase + s_r L_retain + s_c L_context`` (:func:`total_loss`).
"""

from __future__ import annotations

import torch


def esd_target(eps_anchor: torch.Tensor, eps_target: torch.Tensor, eps_uncond: torch.Tensor, eta: float) -> torch.Tensor:
    """The frozen-model regression target of eq. (1): ``eps(a) - eta (eps(c) - eps(""))``."""
    return eps_anchor - eta * (eps_target - eps_uncond)


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_i w_i mean(|p_i - y_i|^2) / n`` over the batch (``w_i = 1`` when ``weights`` is None).

    Computed in float32 whatever the inputs' dtype (mixed-precision forward passes).
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if weights is None:
        return per_sample.mean()
    if weights.shape != per_sample.shape:
        raise ValueError(f"{weights.numel()} weights for a batch of {per_sample.numel()}")
    return (weights.to(per_sample) * per_sample).mean()


def erase_loss(
    eps_student_target: torch.Tensor,
    eps_anchor: torch.Tensor,
    eps_target: torch.Tensor,
    eps_uncond: torch.Tensor,
    eta: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. (1). The three frozen predictions must carry no gradient (they are detached here)."""
    goal = esd_target(eps_anchor.detach(), eps_target.detach(), eps_uncond.detach(), eta)
    return weighted_mse(eps_student_target, goal, weights)


def retain_loss(eps_student: torch.Tensor, eps_frozen: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (2) (and eq. (3) when ``eps_frozen`` is the frozen prediction for the context's retained concept)."""
    return weighted_mse(eps_student, eps_frozen.detach(), weights)


context_loss = retain_loss  # eq. (3) has the form of eq. (2) with a different frozen prompt


def total_loss(terms: dict[str, torch.Tensor], scales: dict[str, float]) -> torch.Tensor:
    """``sum_k scales[k] * terms[k]`` over the terms present (a missing scale is an error)."""
    if not terms:
        raise ValueError("no loss term to optimise")
    total = torch.zeros((), dtype=torch.float32, device=next(iter(terms.values())).device)
    for name, value in terms.items():
        total = total + float(scales[name]) * value
    return total

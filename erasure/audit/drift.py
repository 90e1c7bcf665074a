"""Output drift at the edit sites: how far an edit moves what each concept's tokens write.

For a probe with token vectors ``r`` (the scope's rows of its encoded prompt, :mod:`erasure.vectors`),
summed over every edit site ``W`` with update ``dW = W' - W`` and every selected row::

    drift = sqrt( sum |dW r|^2 / sum |W r|^2 )

It is the retained drift of :mod:`erasure.report`, evaluated for any list of probes: 0 means the
concept's keys and values are untouched, 1 means they moved as much as their own size. It needs one
text-encoder pass per probe and two matrix products per site, so thousands of concepts take seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from ..delta import LowRankUpdate
from ..erase import encode_all
from ..sites import EditSite
from ..vectors import TextEncoder, TokenScope
from .probes import Probe

EPS = 1e-30  # guards 0/0 for a probe whose vectors the sites map to zero


def updates_from_weights(original: Sequence[EditSite], edited: Sequence[EditSite]) -> dict[str, LowRankUpdate]:
    """Dense updates ``dW = W' - W`` (as ``up = dW``, ``down = I``) for two site lists of the same model.

    For an erased MODEL that is only available as patched weights (ComfyUI), not as a :class:`Delta`.
    """
    by_name = {s.name: s for s in edited}
    missing = [s.name for s in original if s.name not in by_name]
    if missing:
        raise ValueError(
            f"the edited model lacks {len(missing)} site(s), e.g. '{missing[0]}'; not the same model family"
        )
    out = {}
    for site in original:
        new = by_name[site.name].weight
        if tuple(new.shape) != tuple(site.weight.shape):
            raise ValueError(f"site '{site.name}': shapes {tuple(site.weight.shape)} and {tuple(new.shape)} differ")
        diff = new.detach().to("cpu", torch.float64) - site.weight.detach().to("cpu", torch.float64)
        out[site.name] = LowRankUpdate(diff, torch.eye(diff.shape[1], dtype=torch.float64))
    return out


def probe_vectors(
    encoder: TextEncoder, probes: Sequence[Probe], scope: TokenScope = "concept_to_eos"
) -> list[torch.Tensor]:
    """Per probe, the ``[k, d]`` token vectors of its prompt selected by ``scope``.

    The concept is located in the prompt as the phrase; a prompt that does not contain it word for word
    is read as a whole (phrase = prompt).
    """
    requests = [(p.prompt, p.concept if _contains(p.prompt, p.concept) else p.prompt) for p in probes]
    encoded = encode_all(encoder, requests)
    return [encoded[r].select(scope).double() for r in requests]


def _contains(prompt: str, phrase: str) -> bool:
    words, pw = prompt.lower().split(), phrase.lower().split()
    return any(words[i : i + len(pw)] == pw for i in range(len(words) - len(pw) + 1))


def site_drift(
    sites: Sequence[EditSite],
    updates: Mapping[str, LowRankUpdate],
    encoder: TextEncoder,
    probes: Sequence[Probe],
    scope: TokenScope = "concept_to_eos",
    progress: Callable[[int, int], None] | None = None,
) -> list[float]:
    """Drift (module docstring) of each probe, in probe order. Sites without an update contribute 0 to the
    numerator and their ``|W r|^2`` to the denominator."""
    vectors = probe_vectors(encoder, probes, scope)
    owner = torch.cat([torch.full((v.shape[0],), i, dtype=torch.long) for i, v in enumerate(vectors)])
    rows = torch.cat(vectors) if vectors else torch.zeros(0, encoder.width, dtype=torch.float64)
    num = torch.zeros(len(probes), dtype=torch.float64)
    den = torch.zeros(len(probes), dtype=torch.float64)
    for k, site in enumerate(sites):
        w = site.weight.detach().to("cpu", torch.float64)
        den.index_add_(0, owner, (rows @ w.T).pow(2).sum(1))
        update = updates.get(site.name)
        if update is not None:
            moved = (rows @ update.down.to(torch.float64).T) @ update.up.to(torch.float64).T
            num.index_add_(0, owner, moved.pow(2).sum(1))
        if progress is not None:
            progress(k + 1, len(sites))
    return (num / den.clamp_min(EPS)).sqrt().tolist()

"""A linear-chain CRF over a tagger's labels, with the transitions IOB2 forbids held impossible.

Why: a token classifier picks each word's label on its own, so it can say ``O I-PER`` or
``B-LOC I-PER``; those are repaired afterwards, by rule. A CRF scores whole label sequences
(the classifier's emissions plus a learnt score for each pair of neighbouring labels), is
trained on the sequence's likelihood, and decodes the best *valid* sequence (Viterbi), with
per-word label probabilities (forward-backward) as confidence scores.

Everything is batched over right-padded sequences: ``emissions`` ``(batch, length, labels)``,
``mask`` ``(batch, length)`` true on real positions. The CRF runs over words, not subwords:
``compact`` gathers each window's labelled (first-subword) positions into one sequence.
Pure torch; no Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ner_core.alignment import IGNORE_INDEX
from ner_core.labels import LabelMap, split_tag

# A forbidden step's score in the likelihood and the marginals: finite, so a gold sequence
# that breaks IOB2 gives a large loss rather than inf/NaN gradients; exp() of it is 0.
FORBIDDEN = -1e4


def allowed_transitions(labels: LabelMap | Sequence[str] | Mapping[int, str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(allowed[from, to], allowed_start[to])`` under IOB2, as bool tensors.

    ``I-X`` may only follow ``B-X`` or ``I-X`` (untyped ``I``: ``B`` or ``I``), and no
    sequence starts with it; everything else is allowed. Label names that are not IOB2
    (HF's ``LABEL_k``, IOBES's ``E-``/``S-``) are refused: the constraints would be wrong.
    """
    names = _names(labels)
    parsed = []
    for name in names:
        try:
            prefix, etype = split_tag(name)
        except ValueError:
            raise ValueError(f"a CRF needs IOB2 label names (O, B-X, I-X or untyped B, I); got {name!r} in {names}") from None
        if prefix not in ("O", "B", "I"):
            raise ValueError(f"a CRF's constraints are IOB2's: label {name!r} (prefix {prefix}) is not IOB2; labels {names}")
        parsed.append((prefix, etype))
    n = len(parsed)
    allowed = torch.ones(n, n, dtype=torch.bool)
    start = torch.ones(n, dtype=torch.bool)
    for j, (prefix, etype) in enumerate(parsed):
        if prefix != "I":
            continue
        start[j] = False
        for i, (p_prefix, p_type) in enumerate(parsed):
            allowed[i, j] = p_prefix in ("B", "I") and p_type == etype
    return allowed, start


def _names(labels) -> list[str]:
    if isinstance(labels, LabelMap):
        return list(labels.labels)
    if isinstance(labels, Mapping):  # an HF config's id2label: keys are ints, or strs after JSON
        return [labels[k] for k in sorted(labels, key=int)]
    return list(labels)


class CRF(nn.Module):
    """Transition scores ``transitions[from, to]`` plus ``start``/``end`` scores, learnt;
    the IOB2 constraint masks (``allowed_transitions``) are buffers saved with them."""

    def __init__(self, labels: LabelMap | Sequence[str] | Mapping[int, str]):
        super().__init__()
        allowed, allowed_start = allowed_transitions(labels)
        n = allowed.shape[0]
        self.num_labels = n
        self.transitions = nn.Parameter(torch.zeros(n, n))
        self.start = nn.Parameter(torch.zeros(n))
        self.end = nn.Parameter(torch.zeros(n))
        # Persistent: HF builds models on the meta device and fills in only what the checkpoint
        # (or, for a new head, ner_core.model's _init_weights) gives; the masks come back from the file.
        self.register_buffer("allowed", allowed)
        self.register_buffer("allowed_start", allowed_start)
        self._labels = _names(labels)

    @property
    def label_names(self) -> list[str]:
        """The label names the constraints were built from, by label id."""
        return list(self._labels)

    def _scores(self, forbidden: float, free_start: torch.Tensor | None = None, batch: int = 1):
        """Masked ``(transitions, start (batch, labels))``; ``free_start`` rows keep every start."""
        trans = self.transitions.masked_fill(~self.allowed, forbidden)
        start_ok = self.allowed_start.expand(batch, -1)
        if free_start is not None:
            start_ok = start_ok | free_start[:, None]
        return trans, self.start.expand(batch, -1).masked_fill(~start_ok, forbidden)

    def log_likelihood(
        self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor, free_start: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``log p(tags | emissions)`` per sequence, ``(batch,)``; 0 for an empty one.

        ``free_start`` (bool, ``(batch,)``): rows scored without the start constraint, for a
        window cut inside an entity, whose gold sequence rightly starts with ``I-X``.
        """
        emissions, mask = emissions.float(), mask.bool()
        if emissions.shape[1] == 0:
            return emissions.new_zeros(emissions.shape[0])
        trans, start = self._scores(FORBIDDEN, free_start, emissions.shape[0])
        return self._path_score(emissions, tags, mask, trans, start) - self._log_partition(emissions, mask, trans, start)

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``log Z`` per sequence: the log-sum-exp of every label sequence's score."""
        emissions, mask = emissions.float(), mask.bool()
        trans, start = self._scores(FORBIDDEN, None, emissions.shape[0])
        return self._log_partition(emissions, mask, trans, start)

    def _path_score(self, emissions, tags, mask, trans, start):
        tags = tags.masked_fill(~mask, 0)  # padding may hold IGNORE_INDEX
        em = emissions.gather(2, tags.unsqueeze(2)).squeeze(2) * mask
        steps = trans[tags[:, :-1], tags[:, 1:]] * mask[:, 1:]
        lengths = mask.sum(1)
        last = tags.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        first = start.gather(1, tags[:, :1]).squeeze(1)
        return torch.where(lengths > 0, first + em.sum(1) + steps.sum(1) + self.end[last], 0.0)

    def _forward_scores(self, emissions, mask, trans, start) -> list[torch.Tensor]:
        """alpha[t] (batch, labels): log-sum of the scores of all paths up to t ending in each label."""
        alpha = [start + emissions[:, 0]]
        for t in range(1, emissions.shape[1]):
            step = torch.logsumexp(alpha[-1].unsqueeze(2) + trans + emissions[:, t].unsqueeze(1), dim=1)
            alpha.append(torch.where(mask[:, t, None], step, alpha[-1]))  # padding carries the last real alpha
        return alpha

    def _log_partition(self, emissions, mask, trans, start):
        if emissions.shape[1] == 0:
            return emissions.new_zeros(emissions.shape[0])
        alpha = self._forward_scores(emissions, mask, trans, start)[-1]
        return torch.where(mask.any(1), torch.logsumexp(alpha + self.end, dim=1), 0.0)

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``p(label at t = j | emissions)``, ``(batch, length, labels)`` (forward-backward); 0 on padding."""
        emissions, mask = emissions.float(), mask.bool()
        batch, length, n = emissions.shape
        if length == 0:
            return emissions.new_zeros(batch, 0, n)
        trans, start = self._scores(FORBIDDEN, None, batch)
        alpha = self._forward_scores(emissions, mask, trans, start)
        end = self.end.expand(batch, -1)
        beta = [end]  # beta[t] (batch, labels): log-sum of the scores from t (excluded) to the end
        for t in range(length - 2, -1, -1):
            step = torch.logsumexp(trans + (emissions[:, t + 1] + beta[-1]).unsqueeze(1), dim=2)
            beta.append(torch.where(mask[:, t + 1, None], step, end))  # a row's last real position sees only end
        beta.reverse()
        log_z = torch.logsumexp(alpha[-1] + self.end, dim=1)
        log_p = torch.stack(alpha, 1) + torch.stack(beta, 1) - log_z[:, None, None]
        return log_p.exp().masked_fill(~mask.unsqueeze(2), 0.0)

    def viterbi(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The best label sequence per row, ``(batch, length)`` long, ``IGNORE_INDEX`` on padding.

        Forbidden steps are ``-inf`` here, not merely unlikely, so the output is valid IOB2
        whatever the emissions (``O`` is always reachable, so some path is finite).
        """
        emissions, mask = emissions.float(), mask.bool()
        batch, length, _ = emissions.shape
        if length == 0:
            return torch.empty(batch, 0, dtype=torch.long, device=emissions.device)
        trans, score = self._scores(float("-inf"), None, batch)
        score = score + emissions[:, 0]
        history = []
        for t in range(1, length):
            best, back = (score.unsqueeze(2) + trans).max(1)
            history.append(back)
            score = torch.where(mask[:, t, None], best + emissions[:, t], score)
        lengths = mask.sum(1)
        cur = (score + self.end).argmax(1)
        out = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long, device=emissions.device)
        for t in range(length - 1, 0, -1):
            real = t < lengths
            out[:, t] = torch.where(real, cur, IGNORE_INDEX)
            cur = torch.where(real, history[t - 1].gather(1, cur.unsqueeze(1)).squeeze(1), cur)
        out[:, 0] = torch.where(lengths > 0, cur, IGNORE_INDEX)
        return out


def compact(values: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's ``keep`` positions moved to the front, in order: ``(values, mask, index)``.

    ``values`` ``(batch, length, ...)``; ``index`` ``(batch, words)`` says where each compact
    position came from (so results can be put back with ``scatter``), ``mask`` which are real.
    """
    keep = keep.bool()
    counts = keep.sum(1)
    words = int(counts.max()) if keep.numel() else 0
    # a stable sort of "not kept" puts the kept positions first, in their original order
    index = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :words]
    mask = torch.arange(words, device=keep.device) < counts[:, None]
    gather_index = index.view(*index.shape, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
    return values.gather(1, gather_index), mask, index


def crf_loss(crf: CRF, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Training loss of a CRF head: ``-mean`` log-likelihood of each window's labelled words.

    ``labels`` ``(batch, subwords)`` as ``ner_core.alignment`` makes them: a label on each
    word's first subword, ``IGNORE_INDEX`` elsewhere. A window whose first labelled word is
    ``I-X`` was cut inside an entity and is scored with a free start (``CRF.log_likelihood``).
    """
    emissions, mask, _ = compact(logits, labels != IGNORE_INDEX)
    tags, _, _ = compact(labels, labels != IGNORE_INDEX)
    tags = tags.masked_fill(~mask, 0)
    free_start = mask[:, 0] & ~crf.allowed_start[tags[:, 0]] if tags.shape[1] else None
    return -crf.log_likelihood(emissions, tags, mask, free_start).mean()


def load_crf(model_dir: str) -> CRF | None:
    """The CRF head saved in a tagger's folder (``crf.*`` of its safetensors), or None for a linear one.

    For engines that run only the network (``ner_core.runtime``'s ONNX sessions return
    logits): the head is read from the files, without loading the model.
    """
    import json
    import os

    from safetensors import safe_open

    from ner_core.model_files import HEAD_KEY, _weight_files

    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    if (config.get(HEAD_KEY) or "linear") != "crf":
        return None
    crf = CRF(config["id2label"])
    state = {}
    for file in _weight_files(model_dir):
        with safe_open(file, framework="pt") as f:
            state.update({k.removeprefix("crf."): f.get_tensor(k) for k in f.keys() if k.startswith("crf.")})
    crf.load_state_dict(state)  # strict: a CRF config whose weights lack the head is an error
    return crf


def crf_of(model) -> CRF | None:
    """A tagger's CRF head (through a DDP wrapper too); None for a linear head."""
    model = getattr(model, "module", model)
    crf = getattr(model, "crf", None)
    return crf if isinstance(crf, CRF) else None


def word_start_mask(word_ids: Sequence[Sequence[int | None]], length: int) -> torch.Tensor:
    """``(windows, length)`` bool: true on each word's first subword, where training put its label.

    ``word_ids``: each window's ``ner_core.alignment.Window.word_ids`` (None on special tokens,
    case markers and context); ``length``: the padded length of the batch.
    """
    mask = torch.zeros(len(word_ids), length, dtype=torch.bool)
    for row, wids in enumerate(word_ids):
        previous = None
        for pos, w in enumerate(wids):
            if w is not None and w != previous:
                mask[row, pos] = True
            previous = w
    return mask


def decode_words(model, logits: torch.Tensor, word_start_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Label ids and their confidence at each word's first subword, for either head.

    ``logits`` ``(batch, subwords, labels)``: the model's output; ``word_start_mask``
    ``(batch, subwords)`` bool: true on each word's first subword (where training put the
    labels). Returns ``(label_ids, scores)``, both ``(batch, subwords)``: at word starts, the
    label (CRF: Viterbi over the window's words; linear: argmax) and its probability (CRF:
    the forward-backward marginal; linear: the softmax); ``IGNORE_INDEX`` and 0 elsewhere.
    """
    word_start_mask = word_start_mask.bool()
    crf = crf_of(model)
    if crf is None:
        probs = logits.float().softmax(-1)
        scores, ids = probs.max(-1)
    else:
        emissions, mask, index = compact(logits, word_start_mask)
        best = crf.viterbi(emissions, mask)
        chosen = crf.marginals(emissions, mask).gather(2, best.clamp(min=0).unsqueeze(2)).squeeze(2)
        ids = torch.full(word_start_mask.shape, IGNORE_INDEX, dtype=torch.long, device=logits.device)
        scores = torch.zeros(word_start_mask.shape, dtype=torch.float, device=logits.device)
        # padding in the compact rows points at non-word positions, which are overwritten below
        ids.scatter_(1, index, best)
        scores.scatter_(1, index, chosen.masked_fill(~mask, 0.0))
    ids = ids.masked_fill(~word_start_mask, IGNORE_INDEX)
    return ids, scores.masked_fill(~word_start_mask, 0.0)

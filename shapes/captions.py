"""Offline caption encoder for the shapes model: words -> learned embeddings -> [B, 1, L, Ct].

Why: OpenSora feeds T5-XXL features to the STDiT; a 4.7B-parameter text encoder is pointless for a
closed vocabulary of ~25 words and would not run offline on a 2-core CPU. A learned token embedding
plus a learned position embedding (the caption template puts every attribute in a fixed slot) is
enough, is trained jointly with the STDiT, and its weights ship beside the model's. Unknown words are
refused (``ConfigError``) rather than mapped to a silent UNK.
"""

from __future__ import annotations

import torch
from torch import nn

from shapes import dataset
from workloads.errors import ConfigError

PAD = "<pad>"
MAX_TOKENS = 8  # the caption template has 8 words


def vocabulary() -> tuple[str, ...]:
    """Fixed word list (index 0 is padding); derived from the dataset's vocabularies."""
    words = [PAD, "a", "moving", "on"]
    for vocab in dataset.ATTRIBUTES.values():
        words.extend(vocab)
    return tuple(words)


VOCAB = vocabulary()
_INDEX = {w: i for i, w in enumerate(VOCAB)}


def tokenize(texts: list[str], max_tokens: int = MAX_TOKENS) -> torch.Tensor:
    """Whitespace tokens -> ids ``[B, max_tokens]`` (padded with 0)."""
    out = torch.zeros(len(texts), max_tokens, dtype=torch.long)
    for i, text in enumerate(texts):
        words = text.lower().split()
        if len(words) > max_tokens:
            raise ConfigError("caption", text, f"at most {max_tokens} words")
        for j, word in enumerate(words):
            if word not in _INDEX:
                raise ConfigError("caption word", word, ", ".join(VOCAB[1:]))
            out[i, j] = _INDEX[word]
    return out


class CaptionEncoder(nn.Module):
    """Token + position embeddings, then LayerNorm: ids ``[B, L]`` -> features ``[B, 1, L, Ct]``.

    The LayerNorm keeps the features at a fixed scale whatever the embeddings learn (T5 features,
    which this stands in for, are also layer-normed). The null caption for CFG is not made here: it
    is the STDiT's own ``y_embedding`` buffer (``model.null_caption(B)``), as in OpenSora.
    """

    def __init__(self, caption_channels: int, max_tokens: int = MAX_TOKENS):
        super().__init__()
        self.max_tokens = max_tokens
        self.token_embedding = nn.Embedding(len(VOCAB), caption_channels)
        self.position_embedding = nn.Parameter(torch.zeros(max_tokens, caption_channels))
        self.norm = nn.LayerNorm(caption_channels)
        nn.init.normal_(self.token_embedding.weight, std=1.0)
        nn.init.normal_(self.position_embedding, std=0.1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, 1, L, Ct]
        x = self.token_embedding(ids) + self.position_embedding[None, : ids.shape[1]]
        return self.norm(x)[:, None]

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Captions (strings) -> [B, 1, L, Ct] on the encoder's device."""
        ids = tokenize(texts, self.max_tokens).to(self.token_embedding.weight.device)
        return self(ids)


def ids_from_labels(labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Token ids of ``dataset.caption`` for a batch of labels, vectorised on the labels' device
    (no host round trip in the training loop). Equal to ``tokenize(dataset.captions(labels))``."""
    dev = labels["shape"].device
    n = len(labels["shape"])

    def word(w: str) -> torch.Tensor:
        return torch.full((n,), _INDEX[w], dtype=torch.long, device=dev)

    def attr(name: str) -> torch.Tensor:
        table = torch.tensor([_INDEX[w] for w in dataset.ATTRIBUTES[name]], device=dev)
        return table[labels[name]]

    cols = [
        word("a"),
        attr("speed"),
        attr("colour"),
        attr("shape"),
        word("moving"),
        attr("direction"),
        word("on"),
        attr("background"),
    ]
    return torch.stack(cols, dim=1)  # [B, 8]

"""CoOp prompt learning through a frozen vision-language text tower (HiVE-MIL and ViLa-MIL, DESIGN §3).

Each prompt is ``[SOT] ctx_1 … ctx_16 {term} : {explanation} [EOT]``: 16 context vectors shared by every
prompt and class (CoOp, init N(0, 0.02)) replace the token embeddings after the start token. Every prompt
is its own sequence through the tower with the tower's own causal mask, pooled at its true end-of-text
token after the shift (or the tower's appended CLS token for CONCH). We do **not** follow the seed code,
which feeds a class's prompts as one batch-first sequence to a sequence-first encoder (so the prompts mix in
attention, without a causal mask) and, in ViLa-MIL, pools 16 positions before the true end-of-text token.

Towers: :class:`OpenClipTextTower` (open_clip CLIP: QuiltNet, demo-clip, tiny-clip; and CoCa-style text
transformers with an appended CLS token, which is CONCH's text tower), :class:`HFClipTextTower`
(transformers CLIPModel: PLIP). :func:`text_tower` builds the right one from a loaded
:class:`slidesnake.features.encoders.Encoder`. Tower weights are frozen; gradients reach only the context.

Shared-prefix fast path (open_clip causal CLIP towers only, chosen automatically by
:attr:`TextTower.shares_prefix`): under the causal mask the first 1 + n_ctx positions (SOT and the shared
context) have the same hidden states in every prompt at every layer, and only the end-of-text row of the
last layer is pooled. So the prefix runs once as one short sequence, each prompt's remaining tokens run
packed (no padding rows through the linear layers) and attend to [the prefix's keys/values; their own],
and the last layer computes queries, attention and MLP for the end-of-text rows only. The result is the
per-prompt computation, re-ordered (same weights, same masks, float32); it is ~2.5× fewer token-rows per
layer for the shipped prompts. CLS-appending towers (CONCH) and the transformers tower (PLIP) take the
per-prompt path :meth:`TextTower.encode_embeddings`.
"""

from __future__ import annotations

import abc
import logging
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)
N_CTX = 16


class TextTower(nn.Module, abc.ABC):
    """A frozen text encoder that takes token embeddings (so learned context can be spliced in).

    ``context_length``: tokens per sequence; ``width``: token embedding size; ``raw_logit_scale``: the
    CLIP temperature parameter as stored (log scale, HiVE-MIL's γ); ``appends_cls``: the tower pools at a
    CLS token it appends after the text (CONCH), so sequences cannot be cut after the last EOT.
    """

    context_length: int
    width: int
    raw_logit_scale: float
    appends_cls: bool = False
    shares_prefix: bool = False  # implements encode_shared_prefix (see the module docstring)

    def freeze(self) -> TextTower:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> TextTower:  # the tower never leaves eval mode (no dropout)
        return super().train(False)

    @abc.abstractmethod
    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, int, int, int]:
        """Texts -> (ids (T, L) as the tower's tokenizer pads them, sot id, eot id, pad id)."""

    @abc.abstractmethod
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(T, L) ids -> (T, L, width) token embeddings (no positions)."""

    @abc.abstractmethod
    def encode_embeddings(self, x: torch.Tensor, ids: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Token embeddings (T, L, width) (+ the ids they stand for) -> (T, D) projected text embeddings,
        causal-masked, pooled at position ``eot`` (T,) or at the tower's CLS token."""

    @abc.abstractmethod
    def reference_encode(self, texts: list[str]) -> torch.Tensor:
        """The tower's own text encoding of plain texts (unnormalised), for equivalence tests."""

    def encode_shared_prefix(self, prefix: torch.Tensor, suffix: torch.Tensor, layout: PrefixLayout) -> torch.Tensor:
        """Token embeddings of the shared prefix (P, width) and of every prompt's remaining tokens packed
        (R, width), arranged as ``layout`` says -> (T, D) projected text embeddings, equal to
        :meth:`encode_embeddings` of the full sequences. Only towers with ``shares_prefix`` implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no shared-prefix path")


class PrefixLayout(NamedTuple):
    """Where each prompt's tokens after the shared prefix sit (built by :class:`PromptLearner`).

    ``n_prefix``: P, the shared leading positions (SOT + context); ``positions`` (R,): the sequence
    position of each packed suffix row; ``slots`` (R,): its index in a (T, ``width``) row-major padded grid
    (prompt t's j-th suffix token at t·width + j); ``lengths`` (T,): suffix tokens per prompt (the last
    one is its EOT); ``last`` (T,): the packed row of each prompt's EOT.
    """

    n_prefix: int
    width: int
    positions: torch.Tensor
    slots: torch.Tensor
    lengths: torch.Tensor
    last: torch.Tensor


def _first_index(ids: torch.Tensor, token: int) -> torch.Tensor:
    """Position of the first ``token`` in each row (the last position where it is absent)."""
    hit = ids == token
    return torch.where(hit.any(1), hit.int().argmax(1), torch.full_like(ids[:, 0], ids.shape[1] - 1))


class OpenClipTextTower(TextTower):
    """open_clip text towers: CLIP (attributes on the model) or a TextTransformer (``model.text``, CoCa/CONCH).

    ``tokenizer`` maps a list of texts to (T, L) ids. CLS-style towers (``cls_emb`` set) build their
    causal + padding mask with their own method, so the mask equals the one the weights were trained with.
    ``shares_prefix`` is set when the tower is a plain causal stack of open_clip ``ResidualAttentionBlock``
    (checked by :func:`_plain_causal_blocks`), the case :meth:`encode_shared_prefix` re-implements.
    """

    def __init__(self, module: nn.Module, tokenizer: Any, raw_logit_scale: float, sot: int, eot: int, pad: int = 0):
        super().__init__()
        self.module = module
        self._tokenizer = tokenizer
        self.sot_id, self.eot_id, self.pad_id = int(sot), int(eot), int(pad)
        self.raw_logit_scale = float(raw_logit_scale)
        self.cls_emb = getattr(module, "cls_emb", None)
        self.appends_cls = self.cls_emb is not None
        n_pos = module.positional_embedding.shape[0]
        self.context_length = n_pos - 1 if self.appends_cls else n_pos
        self.width = int(module.token_embedding.weight.shape[1])
        self.shares_prefix = not self.appends_cls and _plain_causal_blocks(module)
        self.freeze()

    def tokenize(self, texts):
        ids = self._tokenizer(list(texts))
        ids = torch.as_tensor(ids, dtype=torch.long)
        return ids, self.sot_id, self.eot_id, self.pad_id

    def embed_tokens(self, ids):
        return self.module.token_embedding(ids)

    def _mask(self, ids: torch.Tensor, seq_len: int, dtype: torch.dtype) -> torch.Tensor | None:
        m = self.module
        causal = m.attn_mask[:seq_len, :seq_len].to(dtype) if m.attn_mask is not None else None
        if not self.appends_cls:
            return causal
        if hasattr(m, "_build_additive_mask"):  # open_clip >= 3
            add = m._build_additive_mask(ids, seq_len, dtype)
        else:  # the CoCa fork CONCH ships (build_cls_mask)
            add = m.build_cls_mask(ids, dtype).repeat_interleave(m.heads, 0)
        return add if causal is None else causal.unsqueeze(0) + add

    def encode_embeddings(self, x, ids, eot):
        m = self.module
        seq = x.shape[1]
        if self.appends_cls:
            x = torch.cat([x, self.cls_emb.view(1, 1, -1).expand(x.shape[0], 1, -1).to(x.dtype)], 1)
            seq += 1
        attn_mask = self._mask(ids, seq, x.dtype)
        x = x + m.positional_embedding[:seq].to(x.dtype)
        if getattr(m.transformer, "batch_first", True):
            x = m.transformer(x, attn_mask=attn_mask)
        else:
            x = m.transformer(x.permute(1, 0, 2), attn_mask=attn_mask).permute(1, 0, 2)
        x = m.ln_final(x)
        pooled = x[:, -1] if self.appends_cls else x[torch.arange(x.shape[0], device=x.device), eot]
        proj = m.text_projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj

    def encode_shared_prefix(self, prefix, suffix, layout):
        m = self.module
        n_pre = layout.n_prefix
        pos = m.positional_embedding.to(prefix.dtype)
        h = torch.cat([prefix + pos[:n_pre], suffix + pos[layout.positions]])  # (P + R, width): prefix rows first
        keys = torch.arange(n_pre + layout.width, device=h.device)
        query = torch.arange(layout.width, device=h.device)
        # suffix query j sees the whole prefix and suffix keys <= j (padding sits after every real key)
        mask = keys.unsqueeze(0) <= (query + n_pre).unsqueeze(1)  # (S, P + S)
        last_mask = keys.unsqueeze(0) < (layout.lengths + n_pre).unsqueeze(1)  # (T, P + S) for the EOT queries
        blocks = m.transformer.resblocks
        for block in blocks[:-1]:
            h = _prefix_block(block, h, layout, mask)
        x = m.ln_final(_prefix_last_block(blocks[-1], h, layout, last_mask))
        proj = m.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def reference_encode(self, texts):
        ids, *_ = self.tokenize(texts)
        ids = ids.to(self.module.token_embedding.weight.device)
        if hasattr(self.module, "encode_text"):
            return self.module.encode_text(ids)
        out = self.module(ids)
        return out[0] if isinstance(out, tuple) else out


def _plain_causal_blocks(module: nn.Module) -> bool:
    """Whether ``module`` is the text tower :meth:`OpenClipTextTower.encode_shared_prefix` re-implements:
    a causal mask (-inf strictly above the diagonal, 0 elsewhere) and a stack of open_clip
    ``ResidualAttentionBlock`` (pre-LN self-attention with packed q/k/v, no cross-attention, no extra
    key/value bias). Anything else (custom blocks, no causal mask) keeps the per-prompt path."""
    try:
        from open_clip.transformer import ResidualAttentionBlock
    except ImportError:
        return False
    mask = getattr(module, "attn_mask", None)
    blocks = getattr(getattr(module, "transformer", None), "resblocks", None)
    if mask is None or not blocks:
        return False
    causal = torch.full(mask.shape, float("-inf"), dtype=mask.dtype, device=mask.device).triu_(1)
    if not torch.equal(mask, causal):
        return False
    for block in blocks:
        attn = getattr(block, "attn", None)
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            return False
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
            return False
        if attn.bias_k is not None or attn.add_zero_attn:
            return False
    return True


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(..., L, width) -> (..., heads, L, width / heads)."""
    return x.unflatten(-1, (n_heads, -1)).transpose(-3, -2)


def _grid(rows: torch.Tensor, layout: PrefixLayout) -> torch.Tensor:
    """Packed suffix rows (R, C) -> the padded (T, S, C) grid (zeros where a prompt is shorter)."""
    n = len(layout.lengths)
    grid = rows.new_zeros(n * layout.width, rows.shape[1]).index_copy(0, layout.slots, rows)
    return grid.view(n, layout.width, rows.shape[1])


def _prefix_keys_values(kv: torch.Tensor, layout: PrefixLayout, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values (P + R, 2·width) -> per prompt [prefix; own suffix] keys, values (T, heads, P + S, hd)."""
    n_pre, n = layout.n_prefix, len(layout.lengths)
    pre = kv[:n_pre].unsqueeze(0).expand(n, -1, -1)
    both = _heads(torch.cat([pre, _grid(kv[n_pre:], layout)], 1), 2 * n_heads)  # (T, 2·heads, P + S, hd)
    return both[:, :n_heads], both[:, n_heads:]


def _prefix_block(block: nn.Module, h: torch.Tensor, layout: PrefixLayout, mask: torch.Tensor) -> torch.Tensor:
    """One open_clip ``ResidualAttentionBlock`` on [prefix rows; packed suffix rows] (P + R, width).

    The prefix attends causally within itself; suffix row j of a prompt attends to the prefix and to its
    own suffix rows up to j (``mask`` (S, P + S)). Every linear layer runs once on the P + R rows.
    """
    attn = block.attn
    n_heads, width, n_pre = attn.num_heads, h.shape[1], layout.n_prefix
    qkv = F.linear(block.ln_1(h), attn.in_proj_weight, attn.in_proj_bias)  # (P + R, 3·width)
    q, kv = qkv[:, :width], qkv[:, width:]
    pre = F.scaled_dot_product_attention(
        _heads(q[:n_pre], n_heads), *_heads(kv[:n_pre], 2 * n_heads).chunk(2, 0), is_causal=True
    )
    k, v = _prefix_keys_values(kv, layout, n_heads)
    out = F.scaled_dot_product_attention(_heads(_grid(q[n_pre:], layout), n_heads), k, v, attn_mask=mask)
    out = out.transpose(1, 2).reshape(-1, width).index_select(0, layout.slots)  # back to packed rows
    out = torch.cat([pre.transpose(0, 1).reshape(n_pre, width), out])
    h = h + block.ls_1(attn.out_proj(out))
    return h + block.ls_2(block.mlp(block.ln_2(h)))


def _prefix_last_block(block: nn.Module, h: torch.Tensor, layout: PrefixLayout, mask: torch.Tensor) -> torch.Tensor:
    """The last block, for the pooled end-of-text rows only -> (T, width): keys and values of every row,
    but the query, attention output and MLP of one row per prompt (``mask`` (T, P + S): its real keys)."""
    attn = block.attn
    n_heads, width = attn.num_heads, h.shape[1]
    w, b = attn.in_proj_weight, attn.in_proj_bias
    x = block.ln_1(h)
    kv = F.linear(x, w[width:], None if b is None else b[width:])
    eot = layout.last + layout.n_prefix
    q = F.linear(x[eot], w[:width], None if b is None else b[:width])  # (T, width)
    k, v = _prefix_keys_values(kv, layout, n_heads)
    out = F.scaled_dot_product_attention(
        _heads(q.unsqueeze(1), n_heads), k, v, attn_mask=mask.unsqueeze(1).unsqueeze(1)
    )  # (T, heads, 1, hd)
    y = h[eot] + block.ls_1(attn.out_proj(out.reshape(-1, width)))
    return y + block.ls_2(block.mlp(block.ln_2(y)))


class HFClipTextTower(TextTower):
    """transformers ``CLIPModel`` text tower (PLIP): embeddings -> causal encoder -> final LN -> EOS -> projection."""

    def __init__(self, model: nn.Module, tokenizer: Any):
        super().__init__()
        self.text_model = model.text_model
        self.text_projection = model.text_projection
        self._tokenizer = tokenizer
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.width = int(model.config.text_config.hidden_size)
        self.raw_logit_scale = float(model.logit_scale.detach().reshape(-1)[0])
        self.sot_id = int(tokenizer.bos_token_id)
        self.eot_id = int(model.config.text_config.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eot_id)
        self.freeze()

    def tokenize(self, texts):
        tok = self._tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return tok["input_ids"].long(), self.sot_id, self.eot_id, self.pad_id

    def embed_tokens(self, ids):
        return self.text_model.embeddings.token_embedding(ids)

    def encode_embeddings(self, x, ids, eot):
        tm = self.text_model
        h = tm.embeddings(inputs_embeds=x)
        seq = h.shape[1]
        causal = torch.full((seq, seq), float("-inf"), dtype=h.dtype, device=h.device).triu_(1)
        out = tm.encoder(inputs_embeds=h, attention_mask=causal.view(1, 1, seq, seq)).last_hidden_state
        out = tm.final_layer_norm(out)
        return self.text_projection(out[torch.arange(out.shape[0], device=out.device), eot])

    def reference_encode(self, texts):
        ids, *_ = self.tokenize(texts)
        ids = ids.to(self.text_projection.weight.device)
        return self.text_projection(self.text_model(input_ids=ids).pooler_output)


def text_tower(encoder: Any) -> TextTower:
    """The frozen text tower of a loaded :class:`~slidesnake.features.encoders.Encoder`."""
    family = encoder.spec.family
    model = encoder.model
    if family in ("open_clip", "tiny"):
        tok = encoder.tokenizer
        sot = getattr(tok, "sot_token_id", None)
        eot = getattr(tok, "eot_token_id", None)
        if sot is None or eot is None:  # open_clip HFTokenizer wrapper
            sot, eot = tok.tokenizer.bos_token_id, tok.tokenizer.eos_token_id
        raw = float(model.logit_scale.detach().reshape(-1)[0])
        module = model.text if hasattr(model, "text") else model
        return OpenClipTextTower(module, tok, raw, sot, eot, pad=getattr(module, "pad_id", 0))
    if family == "hf_clip":
        return HFClipTextTower(model, encoder.tokenizer)
    if family == "conch":
        tokenizer = encoder.tokenizer

        def tokenize(texts):  # CONCH pads to 128 and drops the last token to make room for its CLS
            return encoder._tokenize(texts=list(texts), tokenizer=tokenizer)[:, :-1]

        raw = float(model.logit_scale.detach().reshape(-1)[0])
        return OpenClipTextTower(
            model.text, tokenize, raw, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id or 0
        )
    raise ValueError(f"encoder {encoder.spec.name!r} (family {family!r}) has no text tower HiVE-MIL/ViLa-MIL can use")


class FrozenTowerMixin:
    """Keeps the frozen text tower out of ``parameters()`` and ``state_dict()`` (model.pt stays small and
    the optimizer never sees it) while ``.to(device)`` still moves it."""

    def _set_tower(self, tower: TextTower) -> None:
        object.__setattr__(self, "tower", tower.freeze())

    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        super()._apply(fn, *args, **kwargs)  # type: ignore[misc]
        self.tower._apply(fn, *args, **kwargs)
        return self


class PromptLearner(nn.Module):
    """16 shared CoOp context vectors spliced after SOT of every prompt; one tower pass for all prompts.

    Prompts are tokenised once at construction. If a prompt plus context exceeds the context length, its
    words are cut (the end token is kept) and a warning names it. A tower with ``shares_prefix`` gets the
    prompts as the shared prefix plus packed suffixes (:class:`PrefixLayout`), any other tower as full
    per-prompt sequences; both give the same embeddings.
    """

    def __init__(self, tower: TextTower, texts: list[str], n_ctx: int = N_CTX, init_std: float = 0.02):
        super().__init__()
        if not texts:
            raise ValueError("PromptLearner needs at least one prompt")
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(torch.randn(n_ctx, tower.width) * init_std)
        ids, sot, eot, pad = tower.tokenize(texts)
        shifted, eot_pos = _shift_for_context(ids, sot, eot, pad, n_ctx, tower.context_length, texts)
        if not tower.appends_cls:  # tokens after the last EOT cannot reach any EOT under the causal mask
            shifted = shifted[:, : int(eot_pos.max()) + 1]
        self.register_buffer("ids", shifted, persistent=False)
        self.register_buffer("eot", eot_pos, persistent=False)
        self.texts = list(texts)
        # the shared-prefix layout: prompt t's tokens after SOT + context are positions n_ctx+1 … eot[t]
        n_pre = 1 + n_ctx
        lengths = eot_pos - n_pre + 1
        pos = [torch.arange(n_pre, int(e) + 1) for e in eot_pos]
        width = int(lengths.max())
        self.register_buffer("suffix_ids", torch.cat([shifted[t, p] for t, p in enumerate(pos)]), persistent=False)
        self.register_buffer("suffix_pos", torch.cat(pos), persistent=False)
        slots = torch.cat([t * width + p - n_pre for t, p in enumerate(pos)])
        self.register_buffer("suffix_slots", slots, persistent=False)
        self.register_buffer("suffix_lengths", lengths, persistent=False)
        self.register_buffer("suffix_last", lengths.cumsum(0) - 1, persistent=False)
        self._suffix_width = width

    def layout(self) -> PrefixLayout:
        """This learner's prompts as a shared prefix plus packed suffixes, on the buffers' device."""
        n_pre, width = 1 + self.n_ctx, self._suffix_width
        return PrefixLayout(n_pre, width, self.suffix_pos, self.suffix_slots, self.suffix_lengths, self.suffix_last)

    def forward(self, tower: TextTower) -> torch.Tensor:
        """(T, D) L2-normalised embeddings of every prompt, gradients flowing to ``ctx`` only."""
        if tower.shares_prefix:
            with torch.no_grad():
                sot = tower.embed_tokens(self.ids[:1, :1])[0]
                suffix = tower.embed_tokens(self.suffix_ids.unsqueeze(0))[0]
            prefix = torch.cat([sot, self.ctx.to(sot.dtype)])
            return F.normalize(tower.encode_shared_prefix(prefix, suffix, self.layout()), dim=-1)
        return F.normalize(self.encode_full(tower), dim=-1)

    def encode_full(self, tower: TextTower) -> torch.Tensor:
        """(T, D) unnormalised embeddings, every prompt as its own full sequence through
        :meth:`TextTower.encode_embeddings` (the path of towers without ``shares_prefix``)."""
        with torch.no_grad():
            tokens = tower.embed_tokens(self.ids)
        ctx = self.ctx.to(tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        x = torch.cat([tokens[:, :1], ctx, tokens[:, 1 + self.n_ctx :]], 1)
        return tower.encode_embeddings(x, self.ids, self.eot)


def _shift_for_context(
    ids: torch.Tensor, sot: int, eot: int, pad: int, n_ctx: int, length: int, texts: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewrite each row as [SOT, n_ctx slots, words, EOT, pad…] of ``length``; return it and the EOT positions.

    The slots hold the SOT id (a non-pad placeholder whose embedding is replaced by the context).
    """
    if n_ctx + 2 > length:
        raise ValueError(f"{n_ctx} context vectors do not fit the tower's {length}-token context")
    rows, positions = [], []
    for i, row in enumerate(ids.tolist()):
        end = row.index(eot) if eot in row else len(row)
        words = row[1:end] if row and row[0] == sot else row[:end]
        room = length - n_ctx - 2
        if len(words) > room:
            log.warning(
                "prompt %r is %d tokens too long with %d context vectors; cut", texts[i], len(words) - room, n_ctx
            )
            words = words[:room]
        seq = [sot] + [sot] * n_ctx + words + [eot]
        positions.append(len(seq) - 1)
        rows.append(seq + [pad] * (length - len(seq)))
    return torch.tensor(rows, dtype=torch.long), torch.tensor(positions, dtype=torch.long)


def raw_logit_scale_of(tower: TextTower) -> float:
    """γ of HiVE-MIL: the encoder's stored logit scale (log space), e.g. ln(100) = 4.6052 for QuiltNet."""
    return tower.raw_logit_scale if math.isfinite(tower.raw_logit_scale) else math.log(100.0)

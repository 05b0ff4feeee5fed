"""The NAR generator: a Llama-style trunk, one decoding head per axis, mixed logits.

Three entry points share every line of the network:

* :meth:`NARModel.forward_train` — mixed logits of every cell in one pass under the proximity mask;
* :meth:`NARModel.prefill` — condition tokens in, logits of the first cell(s) out;
* :meth:`NARModel.decode_step` — the cells of one step in, the logits of the next step out, through a
  static KV cache.

With ``mode='raster'`` the same module is the LlamaGen-style next-token baseline (one head, causal mask);
with ``mode='par'`` it is PAR (one head; ``prod(regions) - 1`` learnable transition tokens, which follow the
grid in the training sequence and are fed with the last region's first cell when decoding: see
:mod:`nar.geometry.grid`). The loss lives outside the model; so do sampling and CFG (:mod:`nar.sampling`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nar.geometry import DecodeLayout, GridGeometry, Schedule
from nar.geometry.grid import FROM_CONDITION, NO_PREDICTOR
from nar.model.conditioning import CaptionEmbedding, ClassEmbedding
from nar.model.config import NARConfig
from nar.model.layers import Block, KVCache, RMSNorm, rotary_table


class Head(nn.Module):
    """RMSNorm then a linear map to the vocabulary."""

    def __init__(self, cfg: NARConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.proj = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(h)).float()


@dataclass
class StepPlan:
    """Device-side constants of one decoding pass (built once per generation)."""

    positions: torch.Tensor  # [T] sequence positions fed
    slots: torch.Tensor | int  # where their keys go in the cache (int: the first of contiguous slots)
    kv_limit: int | None  # attend to the first kv_limit slots (None: the whole cache)
    rope: torch.Tensor  # [T, hd/2, 2] (cos, sin), float32
    mask: torch.Tensor | None  # [B|1, 1, T, kv] bool, None = everything visible
    sources: torch.Tensor  # [A, n_out] index into the T fed tokens (clamped; see weights)
    weights: torch.Tensor  # [A, n_out] float: valid / number of valid predictors
    outputs: torch.Tensor  # [n_out] raster cells produced
    transition: torch.Tensor | None = None  # [K_p] PAR transition tokens fed after the cells (None: none)
    # None when every weight is exact in the inference dtype (1, 1/2: yes; 1/3 of a video cell's three parents
    # is 0.333984375 in bf16); if not, [n_out] float32 that scales the mixed logits instead.
    cell_weight: torch.Tensor | None = None

    @property
    def exact_weights(self) -> bool:
        """Whether the weights mix the heads' features directly (no ``cell_weight`` on the logits)."""
        return self.cell_weight is None


@dataclass
class InferenceState:
    """KV caches and per-step plans of one batched generation."""

    caches: list[KVCache]
    plans: list[StepPlan]
    layout: str
    # Every axis's head projection side by side, [V, A * D]: one matmul mixes all heads (mean of logits).
    head_weight: torch.Tensor | None = None
    # Optional replacements for each block's forward, in cache order (e.g. compiled versions).
    runners: list | None = None
    # False: logits come back in the model's dtype and the caller upcasts (fused into its sampling).
    upcast: bool = True


class NARModel(nn.Module):
    def __init__(self, cfg: NARConfig):
        super().__init__()
        self.cfg = cfg
        self.geometry = GridGeometry(cfg.grid)
        C = cfg.num_cond_tokens
        if cfg.condition == "class":
            self.cls_embedding: nn.Module = ClassEmbedding(cfg.num_classes, cfg.dim)
        else:
            self.cls_embedding = CaptionEmbedding(cfg.caption_dim, cfg.dim, cfg.caption_len)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        # PAR's learnable transition tokens (only mode 'par' has any: nar and raster state dicts are unchanged).
        token_cells = self.geometry.token_cells(cfg.mode, regions=cfg.regions)  # [N + K], CPU
        self.num_transition_tokens = len(token_cells) - cfg.num_cells
        if self.num_transition_tokens:
            self.transition_embeddings = nn.Embedding(self.num_transition_tokens, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout)
        if cfg.position == "absolute":
            self.pos_embedding = nn.Parameter(torch.zeros(cfg.num_cells, cfg.dim))

        # Which features each predicting axis reads: (branch index, depth); depth 0 = the trunk output.
        blocks = cfg.blocks_per_axis
        if cfg.head_sharing == "shared":
            blocks = [blocks[cfg.shared_axis]]
        if cfg.head_layout == "chain":
            branch_depths = [max(blocks)] if max(blocks) > 0 else []
            sources = [(0, b) for b in blocks]
        else:
            branch_depths = [b for b in blocks if b > 0]
            sources, nxt = [], 0
            for b in blocks:
                sources.append((nxt, b))
                nxt += b > 0
        n_axes = len(cfg.blocks_per_axis)
        self._sources = sources if cfg.head_sharing == "per_axis" else sources * n_axes
        self._head_of_axis = list(range(n_axes)) if cfg.head_sharing == "per_axis" else [0] * n_axes

        n_total = cfg.n_layer + sum(branch_depths)
        rates = [cfg.drop_path * i / (n_total - 1) if n_total > 1 else 0.0 for i in range(n_total)]
        self.layers = nn.ModuleList(Block(cfg, rates[i]) for i in range(cfg.n_layer))
        it = iter(rates[cfg.n_layer:])
        self.branches = nn.ModuleList(nn.ModuleList(Block(cfg, next(it)) for _ in range(d)) for d in branch_depths)
        self.heads = nn.ModuleList(Head(cfg) for _ in range(len(blocks) if cfg.head_sharing == "shared" else n_axes))

        # Index tables are always computed on the CPU (also when the module is built on 'meta').
        with torch.device("cpu"):
            if cfg.position == "rope":  # every token rotated by its cell's coordinates (a transition token's: its region's)
                rope = rotary_table(self.geometry.coords[token_cells], cfg.head_dim, C, cfg.rope_base)
            else:  # identity rotation: cos 1, sin 0
                L = C + len(token_cells)
                rope = torch.stack([torch.ones(L, cfg.head_dim // 2), torch.zeros(L, cfg.head_dim // 2)], dim=-1)
            pred = self.geometry.keep_axis(self.geometry.predictors(cfg.mode, regions=cfg.regions),
                                           cfg.parent_axis)  # [A, N]
            train_mask = self.geometry.attention_mask(C, cfg.mode, regions=cfg.regions)  # [L, L]
        # Kept in float32 whatever the model's dtype (see _apply).
        self.register_buffer("rope", rope, persistent=False)
        self.register_buffer("predictors", pred, persistent=False)
        self.register_buffer("train_mask", train_mask, persistent=False)
        # [K] the cell whose absolute position embedding each transition token adds.
        self.register_buffer("transition_cells", token_cells[cfg.num_cells:], persistent=False)
        self.reset_parameters()

    # ------------------------------------------------------------------------------ set-up
    def _apply(self, fn, recurse=True):
        # `.to(bfloat16)` must not round the rotary table: positions are rotated in float32.
        rope = self.rope
        out = super()._apply(fn, recurse)
        self.rope = rope.to(device=self.tok_embeddings.weight.device)
        return out

    @property
    def head_names(self) -> tuple[str, ...]:
        return self.cfg.axis_names if self.cfg.head_sharing == "per_axis" else ("shared",)

    @property
    def schedule(self) -> Schedule:
        """The decoding schedule of ``cfg.mode`` (and ``cfg.regions``)."""
        return self.geometry.schedule(self.cfg.mode, regions=self.cfg.regions)

    @property
    def decode_layout(self) -> DecodeLayout:
        """Positions, cache slots and masks of every pass behind the condition tokens."""
        return self.geometry.decode_layout(self.cfg.num_cond_tokens, self.cfg.mode, regions=self.cfg.regions)

    @property
    def num_passes(self) -> int:
        """Forward passes to generate one sample (prefill included)."""
        return self.schedule.num_passes

    def reset_parameters(self) -> None:
        std = self.cfg.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
        for head in self.heads:  # zero-initialised outputs: every head starts at uniform logits
            nn.init.zeros_(head.proj.weight)

    def blocks(self) -> list[Block]:
        """Every transformer block in cache order: the trunk, then each branch."""
        return [*self.layers, *(b for branch in self.branches for b in branch)]

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The lookup tables: token and class embeddings, the learned null caption and the absolute position table
        (the caption MLP's projections are not among them)."""
        tables = [p for m in self.modules() if isinstance(m, nn.Embedding) for p in m.parameters()]
        extra = [getattr(self, "pos_embedding", None), getattr(self.cls_embedding, "uncond_embedding", None)]
        return tables + [p for p in extra if isinstance(p, nn.Parameter)]

    def num_parameters(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_embeddings.weight.numel()
        return n

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """The null condition (class or caption) shaped like ``cond``, for CFG."""
        return self.cls_embedding.null_like(cond)

    def drop_condition(self, cond: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Replace ``cond`` by the null condition where ``drop [B]`` is True (CFG training)."""
        return self.cls_embedding.drop(cond, drop)

    # ------------------------------------------------------------------------------ network
    def _embed_grid(self, tokens: torch.Tensor, cells: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tok_embeddings(tokens)
        if self.cfg.position == "absolute":
            x = x + (self.pos_embedding if cells is None else self.pos_embedding[cells])
        return x

    def _embed_transition(self, index: torch.Tensor, batch: int) -> torch.Tensor:
        """``[batch, K_p, D]`` transition tokens ``index [K_p]`` (at their region's first cell's position)."""
        x = self.transition_embeddings(index)  # [K_p, D]
        if self.cfg.position == "absolute":
            x = x + self.pos_embedding[self.transition_cells[index]]
        return x[None].expand(batch, -1, -1)

    def _features(self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None,
                  state: InferenceState | None = None, plan: StepPlan | None = None) -> list[torch.Tensor]:
        """Run trunk and branches; return the hidden states each predicting axis reads."""
        if state is None:
            return self._features_of(lambda i, block, hs: [block(hs[0], rope, mask)], [x])[0]
        caches = state.caches
        runners = state.runners or self.blocks()

        def run(i: int, block: Block, hs: list[torch.Tensor]) -> list[torch.Tensor]:
            return [runners[i](hs[0], rope, mask, caches[i], plan.slots, plan.kv_limit)]

        return self._features_of(run, [x])[0]

    def _features_of(self, run, xs: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Trunk and branches over segments ``xs``: ``run(block index, block, hidden states) -> hidden states``
        applies block ``i`` (cache order) to every segment; returns, per segment, each predicting axis's input."""
        i = 0
        for block in self.layers:
            xs = run(i, block, xs)
            i += 1
        taps = [[xs] for _ in self.branches]
        for branch, tap in zip(self.branches, taps):
            hs = xs
            for block in branch:
                hs = run(i, block, hs)
                i += 1
                tap.append(hs)
        per_axis = [xs if depth == 0 else taps[b][depth] for b, depth in self._sources]
        return [[axis[s] for axis in per_axis] for s in range(len(xs))]

    def _mix(self, feats: list[torch.Tensor], sources: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Mixed logits ``[B, n_out, V]`` (float32) from per-axis features ``[B, T, D]``.

        ``sources [A, n_out]`` picks the predicting position of each output per axis and ``weights``
        ``[A, n_out]`` is ``valid / count``, so the sum is the mean over the valid predictors.
        """
        out = None
        for a, (h, src) in enumerate(zip(feats, sources)):
            logits = self.heads[self._head_of_axis[a]](h[:, src])
            term = (logits.softmax(-1) if self.cfg.mixing == "probs" else logits) * weights[a][None, :, None]
            out = term if out is None else out + term
        return out.clamp_min(1e-30).log() if self.cfg.mixing == "probs" else out

    def _mix_plan(self, predictors: torch.Tensor, offset: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Resolve predictor indices to positions in a ``length``-long input (``FROM_CONDITION`` →
        ``offset - 1``; cells at ``offset + index``) and the mixing weights."""
        valid = predictors != NO_PREDICTOR
        src = torch.where(predictors == FROM_CONDITION, offset - 1, offset + predictors)
        src = torch.where(valid, src, 0).clamp(0, length - 1)
        w = valid.float() / valid.sum(0, keepdim=True).clamp(min=1)
        return src, w

    def forward_train(self, tokens: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None = None,
                      return_axis_logits: bool = False):
        """Teacher-forced mixed logits of every cell.

        Args:
            tokens: ``[B, N]`` grid tokens, raster order.
            cond: class ids ``[B]`` or caption features ``[B, L, caption_dim]`` (right-aligned).
            cond_mask: ``[B, L]`` caption validity (1 = token, 0 = padding), captions only.
            return_axis_logits: also return each axis head's own logits and validity (for per-head losses).
        Returns:
            ``logits [B, N, V]`` float32, or ``(logits, [(logits_a [B,N,V], valid_a [N]), ...])``.
        """
        C = self.cfg.num_cond_tokens
        parts = [self.cls_embedding(cond), self._embed_grid(tokens)]  # [B, C, D], [B, N, D]
        if self.num_transition_tokens:  # PAR: [B, K, D] after the grid
            every = torch.arange(self.num_transition_tokens, device=tokens.device)
            parts.append(self._embed_transition(every, tokens.shape[0]))
        x = self.tok_dropout(torch.cat(parts, dim=1))  # [B, L, D]
        mask = self._full_mask(cond_mask, x.shape[0])
        feats = self._features(x, self.rope, mask)
        src, w = self._mix_plan(self.predictors, C, x.shape[1])
        logits = self._mix(feats, src, w)
        if not return_axis_logits:
            return logits
        per_axis = [(self.heads[self._head_of_axis[a]](h[:, s]), w[a] > 0) for a, (h, s) in enumerate(zip(feats, src))]
        return logits, per_axis

    forward = forward_train

    def _full_mask(self, cond_mask: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``[B|1, 1, L, L]`` training mask: geometry mask, padded caption keys hidden, self always visible."""
        mask = self.train_mask
        if cond_mask is None:
            return mask[None, None]
        key_ok = self._key_valid(cond_mask)  # [B, L]
        eye = torch.eye(mask.shape[0], dtype=torch.bool, device=mask.device)
        return (mask[None] & (key_ok[:, None, :] | eye[None]))[:, None]

    def _key_valid(self, cond_mask: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` key validity in sequence order."""
        return self.decode_layout.key_valid(cond_mask)

    # ------------------------------------------------------------------------------ inference
    def start_inference(self, batch: int, cond_mask: torch.Tensor | None = None, layout: str = "decode",
                        dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                        attention: str = "sdpa", kv_dtype: torch.dtype | None = None) -> InferenceState:
        """Allocate KV caches and build every step's plan for a batch of ``batch`` sequences.

        ``layout='decode'`` stores keys in decode order so each step attends to a prefix of the cache
        (no mask beyond caption padding). ``layout='sequence'`` stores keys at their sequence positions
        and masks the whole cache at every step, as the official implementation does; it is the
        reference the fast layout is tested against. ``attention='triton'`` attends through the
        small-query kernel (:mod:`nar.model.decode_attention`) where it applies. ``kv_dtype=torch.float8_e4m3fn``
        keeps the caches in float8 with a scale per row (:class:`~nar.model.layers.KVCache`).
        """
        cfg = self.cfg
        if layout not in ("decode", "sequence"):
            raise ValueError(f"layout must be 'decode' or 'sequence', got {layout!r}")
        device = torch.device(device) if device is not None else self.rope.device
        dtype = dtype or self.tok_embeddings.weight.dtype
        n_blocks = len(self.layers) + sum(len(b) for b in self.branches)
        geo = self.decode_layout
        caches = [KVCache(batch, cfg.kv_heads, len(geo.slot_position), cfg.head_dim, dtype, device, attention,
                          kv_dtype) for _ in range(n_blocks)]
        key_valid = None  # [B, L] in the cache's order
        if cond_mask is not None:
            key_valid = geo.key_valid(cond_mask.to(device), "sequence" if layout == "sequence" else "decode")

        plans = []
        for step in geo.steps:
            positions = step.positions.to(device)
            src, w = self._mix_plan(self.geometry.keep_axis(step.sources, cfg.parent_axis), step.source_offset,
                                    len(step.positions))
            # A condition query must see its own key even when that slot is caption padding.
            cond_queries = step.source_offset > 0
            if layout == "sequence":
                slots: torch.Tensor | int = positions
                kv_limit = None
                mask = _visible(step.sequence_mask.to(device), key_valid, positions, cond_queries)
            else:
                slots, kv_limit = step.start, step.kv_limit
                rows = None if step.mask is None else step.mask.to(device)
                own = torch.arange(step.start, step.kv_limit, device=device)
                mask = _visible(rows, None if key_valid is None else key_valid[:, :kv_limit], own, cond_queries)
            exact = bool(torch.equal(w.to(dtype).to(w.dtype), w))
            plans.append(StepPlan(
                positions=positions, slots=slots, kv_limit=kv_limit,
                rope=self.rope[step.positions.to(self.rope.device)].to(device),
                mask=mask, sources=src.to(device), weights=w.to(device), outputs=step.outputs.to(device),
                transition=step.transition.to(device) if len(step.transition) else None,
                cell_weight=None if exact else w.amax(0).float().to(device)))
        head_weight = self._head_weight() if cfg.mixing == "logits" else None
        return InferenceState(caches, plans, layout, head_weight)

    def _head_projections(self) -> list[torch.Tensor]:
        """Each axis's head projection ``[V, D]``, in axis order (a shared head repeated)."""
        return [self.heads[h].proj.weight for h in self._head_of_axis]

    def _head_weight(self) -> torch.Tensor:
        """Every axis's head projection side by side, ``[V, A * D]`` (see :attr:`InferenceState.head_weight`)."""
        return torch.cat(self._head_projections(), dim=1).detach()

    @torch.no_grad()
    def refresh_inference(self, state: InferenceState) -> None:
        """Copy the heads' current projections into ``state.head_weight`` ``[V, A * D]``, in place (a captured
        CUDA graph reads that buffer). A state kept across calls (the samplers') otherwise mixes with the heads
        it was built with after ``load_state_dict`` (a new checkpoint, EMA weights), while the trunk follows."""
        buf = state.head_weight
        if buf is None:
            return
        projections = self._head_projections()
        first = projections[0]
        shape = (first.shape[0], sum(p.shape[1] for p in projections))
        if tuple(buf.shape) == shape and buf.dtype == first.dtype and buf.device == first.device:
            torch.cat(projections, dim=1, out=buf)  # every sampler call: no [V, A * D] temporary
        else:  # the model changed dtype or device since: convert into the same buffer
            buf.copy_(self._head_weight())

    def prefill(self, cond: torch.Tensor, state: InferenceState) -> torch.Tensor:
        """Condition tokens in; logits ``[B, 1, V]`` of the first cell out."""
        return self.decode_steps([(self.step_input(0, state, cond=cond), 0, state)])[0]

    def decode_step(self, tokens: torch.Tensor, step: int, state: InferenceState) -> torch.Tensor:
        """Feed step ``step``'s cells (``tokens [B, T]``, the outputs of step ``step - 1`` in raster order),
        followed by the step's transition tokens (PAR's first parallel pass); return the mixed logits
        ``[B, n_out, V]`` of the cells step ``step`` produces."""
        return self.decode_steps([(self.step_input(step, state, tokens=tokens), step, state)])[0]

    def step_input(self, step: int, state: InferenceState, cond: torch.Tensor | None = None,
                   tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The embeddings pass ``step`` feeds: the condition ``cond`` at step 0, else ``tokens [B, T]`` (the
        cells step ``step - 1`` produced, raster order) and the step's transition tokens."""
        dtype = state.caches[0].dtype
        if step == 0:
            return self.cls_embedding(cond).to(dtype)
        plan = state.plans[step]
        x = self._embed_grid(tokens, state.plans[step - 1].outputs)
        if plan.transition is not None:
            x = torch.cat([x, self._embed_transition(plan.transition, x.shape[0])], dim=1)
        return x.to(dtype)

    def decode_steps(self, passes: list[tuple[torch.Tensor, int, InferenceState]],
                     segment_runners: list | None = None) -> list[torch.Tensor]:
        """Several independent decoding passes as one: ``(input from step_input, step, state)`` each, every
        state with its own caches. One pass runs each block as :meth:`Block.forward` (or ``state.runners``);
        several run each block once over all their tokens (:meth:`Block.forward_segments`, or the
        ``segment_runners`` replacing it, in cache order), which keeps the matrix products full when each
        pass alone is narrow. Returns each pass's mixed logits, as :meth:`decode_step` would."""
        plans = [state.plans[step] for _, step, state in passes]
        if len(passes) == 1:
            (x, _, state), plan = passes[0], plans[0]
            return [self._mix_inference(self._features(x, plan.rope, plan.mask, state, plan), plan, state)]
        blocks = segment_runners or [b.forward_segments for b in self.blocks()]
        states = [state for _, _, state in passes]

        def run(i: int, block: Block, hs: list[torch.Tensor]) -> list[torch.Tensor]:
            return blocks[i](hs, [p.rope for p in plans], [p.mask for p in plans], [s.caches[i] for s in states],
                             [p.slots for p in plans], [p.kv_limit for p in plans])

        feats = self._features_of(run, [x for x, _, _ in passes])
        return [self._mix_inference(f, plan, state) for f, plan, state in zip(feats, plans, states)]

    def _mix_inference(self, feats: list[torch.Tensor], plan: StepPlan, state: InferenceState) -> torch.Tensor:
        """As :meth:`_mix`; for the mean of logits, all heads in one matmul: the weighted, normalised
        features of every axis side by side times the heads' projections side by side."""
        if state.head_weight is None:
            return self._mix(feats, plan.sources, plan.weights)
        # An inexact weight (1/3 in bf16) would scale the logits (a temperature of 0.998): the features go in
        # with their 0/1 validity and the mean's exact weight scales the logits in float32.
        parts = [self.heads[self._head_of_axis[a]].norm(h[:, src])
                 * (w if plan.exact_weights else (w > 0))[None, :, None].to(h.dtype)
                 for a, (h, src, w) in enumerate(zip(feats, plan.sources, plan.weights))]
        out = F.linear(torch.cat(parts, dim=-1), state.head_weight)
        if not plan.exact_weights:
            return out.float() * plan.cell_weight[None, :, None]
        return out.float() if state.upcast else out


def _visible(rows: torch.Tensor | None, key_valid: torch.Tensor | None, query_slots: torch.Tensor,
             cond_queries: bool) -> torch.Tensor | None:
    """Attention mask ``[B|1, 1, T, K]`` of one pass, or None when every key is visible.

    Args:
        rows: ``[T, K]`` geometric visibility of the ``K`` cache keys (None: all visible).
        key_valid: ``[B, K]`` key validity (caption padding), None without padding.
        query_slots: ``[T]`` slot of each query's own key, always visible to a condition query.
        cond_queries: whether the pass feeds condition tokens; grid keys are always valid, so a pass of
            grid queries needs only the key row, broadcast over the queries.
    """
    if key_valid is None:
        return None if rows is None else rows[None, None]
    keys = key_valid[:, None, :]  # [B, 1, K]
    if cond_queries:
        own = torch.arange(key_valid.shape[1], device=key_valid.device)[None] == query_slots[:, None]  # [T, K]
        keys = keys | own[None]
    return (keys if rows is None else rows[None] & keys)[:, None]

"""HiVE-MIL: hierarchical vision-language few-shot MIL on 5x patches and their 16 20x children.

Wong et al., "HiVE-MIL: Hierarchical Vision-Language Embedding for Few-Shot Whole Slide Image
Classification", NeurIPS 2025. Class descriptions at two scales (4 coarse per class for 5x, 3 fine under
each for 20x) pass through a frozen VLM text tower with 16 learned CoOp context vectors; TGDF keeps the
image-text pairs above μ+ασ per text; a heterogeneous graph joins patches and descriptions within a scale
and parents/children and coarse/fine descriptions across scales; slide logits are γ·top-k similarity
means per description. Trainable: the context vectors and the graph only (frozen features and tower).

Differences from the reference code (and why) — see also :mod:`slidesnake.models.vl.prompt_learner`:
TGDF is the paper's binary mask (Alg. 1), not the code's min-max-normalised scores; HTCL is the paper's
Eq. 8 with class-wise positives and negatives (the code's negative term is identically zero); children
sit in fixed slots dy·4+dx (the code keeps file order and samples >16 children at random); every prompt
is encoded as its own causal-masked sequence; cross-scale attention follows the hierarchical edges
(a parent attends over its own children) instead of over every node of the other scale; the residual is
added once per layer (the code adds it twice).

Known limit, measured on the hard demo (demo_hard_vl: class morphology in 7% foci, 8192-px slides, so ~13
5x parents and ~146 20x children per slide), few-shot curve with demo-clip, 5 repeats of 10 test patients:
HiVE-MIL stays near chance at N = 1–8 (AUC 0.48–0.55) while ABMIL reaches 0.95 at N = 8. Zero-shot sits at
chance there too (0.51): demo-clip tells pure class tiles apart (tile AUC 1.0), but on these slides no
text-only slide score separates the classes (top-k mean of per-tile class margins: AUC 0.54–0.62, and
0.46–0.66 with demo-clip pretrained on a corpus at the slides' 3× stain spread), so the text gives the
models no prior to start from. At lr 1e-3 the training loss oscillates; at 3e-4 it fits 8 training bags
without dropout, yet test AUC over repeats ranges 0.12–0.96. Tried without a clear gain: no early stopping,
dropout 0, lr 1e-4, top-k 10 at 20x (k = 100 of ~146 children is nearly a mean on these small slides; the
paper's k assumes thousands), zero-initialised graph branches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slidesnake.models.mil.base import MILModel, MILOutput
from slidesnake.models.registry import register
from slidesnake.models.vl.graph import IMG5, IMG20, TXT5, TXT20, HiveGraph, build_graph
from slidesnake.models.vl.hier_prompts import N_COARSE, N_FINE_PER_COARSE, HierPrompts
from slidesnake.models.vl.prompt_learner import (
    N_CTX,
    FrozenTowerMixin,
    PromptLearner,
    TextTower,
    raw_logit_scale_of,
)


def htcl_loss(
    fine: torch.Tensor, coarse: torch.Tensor, fine_class: torch.Tensor, coarse_class: torch.Tensor
) -> torch.Tensor:
    """Hierarchical text contrastive loss, paper Eq. 8.

    For each fine (20x) description s: positives P_s = the coarse descriptions of its own class, negatives
    N_s = the coarse descriptions of every other class;
    L = mean_s [ −mean_{p∈P_s} log σ(cos(s, p)) − mean_{n∈N_s} log σ(−cos(s, n)) ].
    """
    cos = F.normalize(fine, dim=-1) @ F.normalize(coarse, dim=-1).T  # (T20, T5)
    pos = (fine_class.unsqueeze(1) == coarse_class.unsqueeze(0)).to(cos.dtype)
    neg = 1.0 - pos
    pos_term = -(F.logsigmoid(cos) * pos).sum(1) / pos.sum(1).clamp(min=1)
    neg_term = -(F.logsigmoid(-cos) * neg).sum(1) / neg.sum(1).clamp(min=1)
    return (pos_term + neg_term).mean()


def topk_mean(sim: torch.Tensor, k: int) -> torch.Tensor:
    """(N, T) similarities -> (T,) mean of each column's top-min(k, N) values."""
    return sim.topk(min(k, sim.shape[0]), dim=0).values.mean(0)


@register("hivemil", inputs=("hierarchy", "text", "text_encoder"), task_kinds=("classification",))
class HiVEMIL(FrozenTowerMixin, MILModel):
    """HiVE-MIL on a hierarchy bag. Constructor inputs beyond the MIL contract:

    text_tower: a frozen :class:`TextTower` (``prompt_learner.text_tower(load_encoder(name))``), the same
    encoder that made the features; prompts: :class:`HierPrompts` in the task's class order
    (``load_hier_prompts(path, classes)``). forward takes the hierarchy bag: ``features`` (N5, 16, D),
    ``mask`` (N5, 16) and ``parent_features`` (N5, D) (the hierarchy h5's dataset; without it the masked
    mean of the present children stands in). ``attention`` is a per-parent relevance: the
    highest similarity of the parent to any description of the predicted class (0 for filtered parents).
    """

    input_kind = "hierarchy"
    reads_parent_features = True
    map_shows = "5x region's best similarity to a coarse description of the predicted class (0: filtered by TGDF)"

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        text_tower: TextTower,
        prompts: HierPrompts,
        n_ctx: int = N_CTX,
        alpha: float = 0.5,
        topk_low: int = 2,
        topk_high: int = 100,
        htcl_weight: float = 0.5,
        layers: int = 2,
        dropout: float = 0.0,
        gamma: float | None = None,
    ) -> None:
        super().__init__(in_dim, n_outputs)
        if prompts.n_classes != n_outputs:
            raise ValueError(f"{prompts.source}: {prompts.n_classes} classes of prompts for a {n_outputs}-class task")
        self._set_tower(text_tower)
        self.prompt_learner = PromptLearner(text_tower, prompts.coarse_texts() + prompts.fine_texts(), n_ctx)
        self.graph = HiveGraph(in_dim, layers, dropout)
        self.alpha, self.topk_low, self.topk_high, self.htcl_weight = alpha, topk_low, topk_high, htcl_weight
        self.gamma = float(gamma) if gamma is not None else raw_logit_scale_of(text_tower)
        c = prompts.n_classes
        self.n_coarse = c * N_COARSE
        self.register_buffer("coarse_class", torch.arange(c).repeat_interleave(N_COARSE), persistent=False)
        self.register_buffer(
            "fine_class", torch.arange(c).repeat_interleave(N_COARSE * N_FINE_PER_COARSE), persistent=False
        )
        self.register_buffer(
            "fine_parent", torch.arange(c * N_COARSE).repeat_interleave(N_FINE_PER_COARSE), persistent=False
        )

    def text_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(coarse (4C, D), fine (12C, D)) prompt embeddings: one tower pass for all classes."""
        t = self.prompt_learner(self.tower)
        if t.shape[1] != self.in_dim:
            raise ValueError(f"text tower gives {t.shape[1]}-d embeddings but the features are {self.in_dim}-d")
        return t[: self.n_coarse], t[self.n_coarse :]

    def _scores(self, features: torch.Tensor, mask: torch.Tensor | None, parent_features: torch.Tensor | None) -> tuple:
        """The graph pass of one bag: (graph data, normalised node features h (the text nodes at least),
        s5 (kept N5, 4C), s20 (kept children, 12C), per-description top-k mean similarities: coarse (4C,),
        fine (12C,); γ not applied). With gradient enabled s5 and s20 carry none (only the top-k means do)."""
        if features.ndim != 3 or features.shape[0] == 0:
            raise ValueError(f"HiVE-MIL needs a non-empty hierarchy bag (N5, 16, D), got {tuple(features.shape)}")
        if mask is None:
            mask = features.abs().sum(-1) > 0
        mask = mask.bool()
        if parent_features is None:
            parent_features = _children_mean(features, mask)
        t5, t20 = self.text_features()
        data = build_graph(parent_features, features, mask, t5, t20, self.fine_parent, self.alpha)
        if torch.is_grad_enabled() and data[IMG5].num_nodes and data[IMG20].num_nodes:
            # training: the last layer's image rows get gradient only where a top-k picks them (same values)
            h, s5, s20, per5, per20 = self.graph.topk_scores(data, self.topk_low, self.topk_high)
            return data, h, s5, s20, per5, per20
        h = self.graph(data)
        s5 = h[IMG5] @ h[TXT5].T  # (kept N5, 4C)
        s20 = h[IMG20] @ h[TXT20].T  # (kept children, 12C)
        per5 = topk_mean(s5, self.topk_low)
        per20 = topk_mean(s20, self.topk_high) if len(s20) else None
        return data, h, s5, s20, per5, per20

    def forward(
        self,
        features: torch.Tensor,
        coords: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        label: torch.Tensor | None = None,
        parent_features: torch.Tensor | None = None,
    ) -> MILOutput:
        data, h, s5, s20, per5, per20 = self._scores(features, mask, parent_features)
        logits = self._logits(per5, per20)
        aux = self.htcl_weight * htcl_loss(h[TXT20], h[TXT5], self.fine_class, self.coarse_class)
        attention = features.new_zeros(features.shape[0])
        with torch.no_grad():
            pred = logits.argmax()
            attention[data[IMG5].row] = s5[:, self.coarse_class == pred].max(1).values
        return MILOutput(logits=logits, attention=attention, aux_loss=aux)

    @torch.no_grad()
    def explain(
        self, features: torch.Tensor, mask: torch.Tensor | None = None, parent_features: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """What the slide logits are made of: ``coarse`` (4C,) and ``fine`` (12C,) per-description scores
        (a class's logit is the mean of its coarse plus the mean of its fine ones), the ``logits``, and
        ``hit_ratio``: HiVE-MIL's Hit Ratio@2 of the 20x descriptions under their 5x parents."""
        data, _, s5, s20, per5, per20 = self._scores(features, mask, parent_features)
        fine = per20 if per20 is not None else s20.new_zeros(s20.shape[1])
        hit = hit_ratio_at_2(s5, s20, data[IMG20].parent, self.fine_parent)
        return {
            "coarse": self.gamma * per5,
            "fine": self.gamma * fine,
            "logits": self._logits(per5, per20),
            "hit_ratio": hit,
        }

    def _logits(self, per5: torch.Tensor, per20: torch.Tensor | None) -> torch.Tensor:
        """Slide logits: γ·(mean over a class's coarse descriptions) + γ·(mean over its fine ones)."""
        c = self.n_outputs
        low = self.gamma * per5.view(c, -1).mean(1)
        high = self.gamma * per20.view(c, -1).mean(1) if per20 is not None else torch.zeros_like(low)
        return low + high


def hit_ratio_at_2(
    s5: torch.Tensor, s20: torch.Tensor, child_parent: torch.Tensor, fine_parent: torch.Tensor
) -> torch.Tensor:
    """Hit Ratio@2 (HiVE-MIL App. F): a 5x patch is a hit if any of its children's top-1 fine description
    belongs to one of the patch's top-2 coarse descriptions; the ratio is hits / patches.

    s5 (N5, T5) patch × coarse and s20 (M, T20) child × fine similarities; child_parent (M,) each child's
    patch row in s5; fine_parent (T20,) each fine description's coarse one.
    """
    if len(s5) == 0:
        return s5.new_zeros(())
    top2 = s5.topk(min(2, s5.shape[1]), dim=1).indices  # (N5, 2)
    if len(s20) == 0:
        return s5.new_zeros(())
    parent_of_best = fine_parent.to(s20.device)[s20.argmax(1)]  # (M,) coarse description of each child's best
    child_hit = (top2[child_parent] == parent_of_best.unsqueeze(1)).any(1)
    hits = torch.zeros(len(s5), dtype=torch.bool, device=s5.device)
    hits[child_parent[child_hit]] = True
    return hits.float().mean()


def _children_mean(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Stand-in 5x feature: the mean of a parent's present children (used when parent_features is absent)."""
    w = mask.to(features.dtype).unsqueeze(-1)
    return (features * w).sum(1) / w.sum(1).clamp(min=1)

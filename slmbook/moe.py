"""Mixture of experts: a router sends each token to k of n feed-forward experts (chapter 13).

    scores  = softmax(x W_router^T)           (or sigmoid, DeepSeek-V3)          (tokens, n_experts)
    experts = top-k(scores [+ balance bias])   the k experts of each token
    weights = scores of those k [/ their sum]  renormalised to sum to 1 (norm_topk_prob)
    y       = sum_j weights_j * expert_j(x)  [+ shared_experts(x)]

Each expert is a SwiGLU MLP (chapter 10). A token pays for k experts, but the model holds n: more
parameters (knowledge) at the same compute per token. Only the chosen experts run: the dispatch
sorts the (token, expert) assignments by expert, runs each expert once on its own tokens, and adds
the weighted results back ("permute, compute, un-permute"); nothing is computed for an unchosen pair.

Keeping the experts busy evenly is the hard part: a router left alone sends most tokens to a few
experts, which then learn fastest and attract even more. Remedies, all here as switches:
- Switch Transformer's load-balancing loss (Fedus et al., 2021): n * sum_i f_i * P_i, where f_i is
  the fraction of tokens that chose expert i and P_i the mean router probability of i; smallest
  when both are uniform.
- ST-MoE's router z-loss (Zoph et al., 2022): mean(logsumexp(logits)^2) keeps router logits small,
  so the softmax stays numerically tame.
- DeepSeek-V3's auxiliary-loss-free balancing (2024): a per-expert bias added to the scores only
  when *choosing* experts (never to the weights); after each training batch an overloaded expert's
  bias goes down by `rate`, an underloaded one's up.
- A capacity factor (GShard, Switch): each expert takes at most capacity = ceil(factor * tokens * k
  / n_experts) assignments per batch; the overflow is dropped (those tokens skip the expert and
  keep only the residual), first choices served before second choices, earlier tokens first.

DeepSeekMoE's other two ideas are configurations: shared experts that every token uses (common
knowledge need not be learned n times) and fine-grained experts (split each expert into m smaller
ones and route to m*k of them: more combinations at the same cost; `fine_grained`).

The auxiliary losses reach the gradients without changing the model's output or its reported loss:
`AddAuxiliaryLoss` (from DeepSeek-V2's code) passes the output through unchanged and, in the backward
pass, gives the auxiliary loss a gradient of 1. So any training loop trains an MoE model with
balancing, and its logged loss stays the plain cross-entropy, comparable with a dense model's.

The layout and names follow transformers' Qwen3-MoE (`mlp.gate` the router, `mlp.experts.{i}` the
experts as in its checkpoint files), so `slmbook.hf_interop.to_transformers_moe` / `from_transformers_moe`
move weights across, and the tests prove the logits equal to Qwen3MoeForCausalLM's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slmbook.config import ROUTER_SCORES, QwenConfig, boolean, finite_number, positive_int
from slmbook.feedforward import SwiGLU


def _non_negative(name: str, value) -> float:
    """A loss weight or step size: finite and >= 0 (an infinite one makes every gradient infinite)."""
    return float(finite_number(name, value))


# ------------------------------------------------------------------------------------------------
# routing
# ------------------------------------------------------------------------------------------------


@dataclass
class Routing:
    """The router's decision for N tokens (all tensors detached when stored on a layer)."""

    logits: torch.Tensor  # (N, n_experts) router logits
    scores: torch.Tensor  # (N, n_experts) softmax or sigmoid of the logits (float32)
    experts: torch.Tensor  # (N, k) chosen expert ids, best first
    weights: torch.Tensor  # (N, k) mixing weights of the chosen experts (0 where dropped)
    kept: torch.Tensor  # (N, k) bool: False where the capacity limit dropped the assignment
    capacity: int | None  # assignments an expert may take in this batch (None = unlimited)

    @property
    def n_experts(self) -> int:
        return self.scores.shape[-1]

    @property
    def n_dropped(self) -> int:
        """(token, expert) assignments dropped for lack of capacity."""
        return int((~self.kept).sum())

    @property
    def n_tokens_dropped(self) -> int:
        """Tokens that lost every one of their experts (only the residual carries them on)."""
        return int((~self.kept.any(dim=-1)).sum())

    def load(self, kept_only: bool = True) -> torch.Tensor:
        """Assignments each expert received, (n_experts,) int64 (before dropping if kept_only=False)."""
        experts = self.experts[self.kept] if kept_only else self.experts.reshape(-1)
        return torch.bincount(experts.reshape(-1), minlength=self.n_experts)

    def dense_weights(self) -> torch.Tensor:
        """(N, n_experts) mixing weights with zeros for unchosen experts: the token x expert map."""
        out = torch.zeros_like(self.scores)
        return out.scatter(-1, self.experts, self.weights.to(out.dtype))

    def detach(self) -> "Routing":
        return Routing(self.logits.detach(), self.scores.detach(), self.experts, self.weights.detach(),
                       self.kept, self.capacity)


class TopKRouter(nn.Linear):
    """The router: a linear layer dim -> n_experts (`router(x)` gives the logits, as any nn.Linear)
    and `route(x)`, which turns the logits into each token's top-k experts and their weights.

    score="softmax": probabilities over experts (Switch, Mixtral, Qwen3-MoE); "sigmoid": each expert
    scored on its own (DeepSeek-V3). normalize=True divides the k chosen scores by their sum.
    bias_update_rate > 0 adds DeepSeek-V3's balance bias (`e_score_correction_bias`, not trained by
    gradients) to the scores when choosing, and `update_bias` moves it after each training batch.
    """

    def __init__(self, dim: int, n_experts: int, top_k: int, score: str = "softmax", normalize: bool = True,
                 bias_update_rate: float = 0.0, dtype: torch.dtype | None = None):
        positive_int("dim", dim)
        positive_int("n_experts", n_experts)
        positive_int("top_k", top_k)
        if top_k > n_experts:
            raise ValueError(f"top_k={top_k} exceeds n_experts={n_experts}: allowed 1..{n_experts}")
        if not isinstance(score, str) or score not in ROUTER_SCORES:
            raise ValueError(f"score={score!r}: allowed {ROUTER_SCORES}")
        super().__init__(dim, n_experts, bias=False, dtype=dtype)
        self.n_experts, self.top_k, self.score, self.normalize = n_experts, top_k, score, boolean("normalize", normalize)
        self.bias_update_rate = _non_negative("bias_update_rate", bias_update_rate)
        if self.bias_update_rate > 0:
            self.e_score_correction_bias = nn.Parameter(torch.zeros(n_experts), requires_grad=False)
        else:
            self.e_score_correction_bias = None

    def route(self, x: torch.Tensor) -> Routing:
        """Routing of x (N, dim): logits, scores, top-k experts and their weights."""
        logits = self(x)
        scores = torch.softmax(logits.float(), dim=-1) if self.score == "softmax" else torch.sigmoid(logits.float())
        choice = scores if self.e_score_correction_bias is None else scores + self.e_score_correction_bias
        experts = torch.topk(choice, self.top_k, dim=-1).indices
        weights = scores.gather(-1, experts)  # the bias chooses, it never weighs
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        kept = torch.ones_like(experts, dtype=torch.bool)
        return Routing(logits, scores, experts, weights.to(x.dtype), kept, None)

    @torch.no_grad()
    def update_bias(self, load: torch.Tensor) -> None:
        """DeepSeek-V3: bias_i += rate * sign(mean load - load_i): overloaded experts become less
        likely to be chosen, underloaded ones more."""
        if self.e_score_correction_bias is None:
            raise ValueError("update_bias needs bias_update_rate > 0 (the router has no balance bias)")
        load = load.float()
        self.e_score_correction_bias += self.bias_update_rate * torch.sign(load.mean() - load)

    def extra_repr(self) -> str:
        return (f"dim={self.in_features}, n_experts={self.n_experts}, top_k={self.top_k}, score={self.score}, "
                f"normalize={self.normalize}, bias_update_rate={self.bias_update_rate}")


def expert_capacity(n_tokens: int, n_experts: int, top_k: int, capacity_factor: float) -> int:
    """ceil(capacity_factor * n_tokens * top_k / n_experts): factor 1.0 is exactly a fair share."""
    return math.ceil(capacity_factor * n_tokens * top_k / n_experts)


def capacity_mask(experts: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """(N, k) bool: which assignments fit when each expert takes at most `capacity` of them.

    Priority (GShard): every token's first choice before any second choice, and within a choice
    rank, earlier tokens first. An assignment's place in its expert's queue is a running count.
    """
    n_tokens, k = experts.shape
    order = experts.t().reshape(-1)  # rank-major: all first choices, then all second choices, ...
    one_hot = F.one_hot(order, n_experts)
    place = (one_hot.cumsum(dim=0) * one_hot).sum(dim=-1) - 1  # 0 for the first arrival at an expert
    return (place < capacity).reshape(k, n_tokens).t()


# ------------------------------------------------------------------------------------------------
# auxiliary losses
# ------------------------------------------------------------------------------------------------


def load_balancing_loss(scores: torch.Tensor, experts: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch Transformer's balancing loss: n_experts * sum_i f_i * P_i.

    f_i: fraction of tokens with expert i among their top-k (no gradient: a count);
    P_i: mean over tokens of expert i's score, normalised to sum to 1 per token (a softmax already
    does; sigmoid scores are divided by their sum, as DeepSeek-V3's balance loss does).
    Uniform routing gives k (1 for top-1, Switch's case); concentrating on few experts gives more.
    The gradient flows through P: the router learns to lower the probability of busy experts.
    """
    probs = scores / scores.sum(dim=-1, keepdim=True)
    f = torch.bincount(experts.reshape(-1), minlength=n_experts).to(probs.dtype) / scores.shape[0]
    return n_experts * (f * probs.mean(dim=0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's z-loss: mean over tokens of logsumexp(router logits)^2."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


class AddAuxiliaryLoss(torch.autograd.Function):
    """y = AddAuxiliaryLoss.apply(x, aux): y is x, but backward also sends d/d(aux) = 1 into aux,
    as if aux had been added to the final loss (DeepSeek-V2's modeling code)."""

    @staticmethod
    def forward(ctx, x, loss):
        ctx.dtype, ctx.needs_loss_grad = loss.dtype, loss.requires_grad
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        grad_loss = torch.ones((), dtype=ctx.dtype, device=grad_output.device) if ctx.needs_loss_grad else None
        return grad_output, grad_loss


# ------------------------------------------------------------------------------------------------
# the MoE feed-forward
# ------------------------------------------------------------------------------------------------


class MoEFeedForward(nn.Module):
    """A drop-in for the dense SwiGLU feed-forward: router `gate`, routed `experts`, and optional
    `shared_experts` (one SwiGLU of n_shared * hidden_dim, like DeepSeek's fused shared experts).

    After each forward, `last_routing` holds the (detached) routing and `last_aux_losses` the
    balancing and z-losses of the batch, for plots and logs.
    """

    def __init__(self, dim: int, n_experts: int, top_k: int, hidden_dim: int, n_shared_experts: int = 0,
                 score: str = "softmax", normalize: bool = True, capacity_factor: float | None = None,
                 aux_loss_coef: float = 0.0, z_loss_coef: float = 0.0, bias_update_rate: float = 0.0,
                 dtype: torch.dtype | None = None):
        super().__init__()
        positive_int("hidden_dim", hidden_dim)
        if not isinstance(n_shared_experts, int) or isinstance(n_shared_experts, bool) or n_shared_experts < 0:
            raise ValueError(f"n_shared_experts={n_shared_experts!r}: must be an integer >= 0")
        if capacity_factor is not None:
            finite_number("capacity_factor", capacity_factor, strict=True, none_means="no capacity limit")
        self.gate = TopKRouter(dim, n_experts, top_k, score, normalize, bias_update_rate, dtype=dtype)
        self.experts = nn.ModuleList(SwiGLU(dim, hidden_dim, dtype=dtype) for _ in range(n_experts))
        self.shared_experts = SwiGLU(dim, n_shared_experts * hidden_dim, dtype=dtype) if n_shared_experts else None
        self.n_experts, self.top_k = n_experts, top_k
        self.capacity_factor = capacity_factor
        self.aux_loss_coef = _non_negative("aux_loss_coef", aux_loss_coef)
        self.z_loss_coef = _non_negative("z_loss_coef", z_loss_coef)
        self.last_routing: Routing | None = None
        self.last_aux_losses: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, config: QwenConfig, dtype: torch.dtype | None = None) -> "MoEFeedForward":
        if not config.is_moe:
            raise ValueError(f"config.n_experts={config.n_experts}: a mixture of experts needs n_experts > 0")
        return cls(config.dim, config.n_experts, config.n_experts_per_token, config.expert_hidden_dim,
                   config.n_shared_experts, config.router_score, config.router_normalize, config.capacity_factor,
                   config.router_aux_loss_coef, config.router_z_loss_coef, config.router_bias_update_rate,
                   dtype=dtype)

    def route(self, x: torch.Tensor) -> Routing:
        """The router's decision for x (N, dim), with the capacity limit applied."""
        routing = self.gate.route(x)
        if self.capacity_factor is not None:
            routing.capacity = expert_capacity(x.shape[0], self.n_experts, self.top_k, self.capacity_factor)
            routing.kept = capacity_mask(routing.experts, self.n_experts, routing.capacity)
            routing.weights = routing.weights * routing.kept
        return routing

    def dispatch(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        """sum_j weight_j * expert_j(x) for each token, running each expert only on its own tokens.

        The loop needs the count of each expert's tokens on the CPU (one device sync per layer, as in
        transformers' implementation); grouped-GEMM kernels avoid it on GPUs, with the same result.
        """
        k = routing.experts.shape[1]
        kept = routing.kept.reshape(-1)
        expert_of = routing.experts.reshape(-1)[kept]  # one entry per kept (token, expert) pair
        token_of = torch.arange(x.shape[0], device=x.device).repeat_interleave(k)[kept]
        weight_of = routing.weights.reshape(-1)[kept]
        order = torch.argsort(expert_of, stable=True)  # permute: group the pairs by expert
        counts = torch.bincount(expert_of, minlength=self.n_experts).tolist()
        out = torch.zeros_like(x)
        start = 0
        for e, count in enumerate(counts):
            if count == 0:
                continue  # an expert nobody chose costs nothing
            pairs = order[start:start + count]
            start += count
            tokens = token_of[pairs]
            y = self.experts[e](x[tokens]) * weight_of[pairs, None]
            out.index_add_(0, tokens, y.to(out.dtype))  # un-permute: add back at each token's row
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        routing = self.route(flat)
        out = self.dispatch(flat, routing)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        training = self.training and torch.is_grad_enabled()
        if training and (self.aux_loss_coef > 0 or self.z_loss_coef > 0):
            balance = load_balancing_loss(routing.scores, routing.experts, self.n_experts)
            z = router_z_loss(routing.logits)
            out = AddAuxiliaryLoss.apply(out, self.aux_loss_coef * balance + self.z_loss_coef * z)
            self.last_aux_losses = {"balance": balance.detach(), "z": z.detach()}  # no .item(): no sync
        if training and self.gate.e_score_correction_bias is not None:
            self.gate.update_bias(routing.load(kept_only=False))
        self.last_routing = routing.detach()
        return out.reshape(shape)


# ------------------------------------------------------------------------------------------------
# counting, configurations, and models that use it
# ------------------------------------------------------------------------------------------------


def moe_layers(model: nn.Module) -> list[MoEFeedForward]:
    """The MoE feed-forward layers of a model, in order."""
    return [m for m in model.modules() if isinstance(m, MoEFeedForward)]


def parameter_counts(config: QwenConfig) -> dict[str, int]:
    """'total' parameters and 'active' ones (used per token: k routed experts + shared experts +
    everything that is not a feed-forward), from the shape alone; tied embeddings counted once."""
    from slmbook.memory import parameter_count

    total = parameter_count(config)
    if not config.is_moe:
        return {"total": total, "active": total}
    unused = config.n_experts - config.n_experts_per_token  # routed experts a token does not visit
    return {"total": total, "active": total - config.n_layers * unused * 3 * config.dim * config.expert_hidden_dim}


def fine_grained(config: QwenConfig, m: int) -> QwenConfig:
    """DeepSeekMoE's fine-grained experts: each expert split into m of 1/m the hidden size and m times
    as many chosen per token: the same parameters and compute, many more expert combinations."""
    positive_int("m", m)
    if not config.is_moe:
        raise ValueError("fine_grained needs an MoE config (n_experts > 0)")
    if config.expert_hidden_dim % m:
        raise ValueError(f"m={m} does not divide the expert hidden size {config.expert_hidden_dim}")
    return config.replace(n_experts=config.n_experts * m, n_experts_per_token=config.n_experts_per_token * m,
                          moe_hidden_dim=config.expert_hidden_dim // m, n_shared_experts=config.n_shared_experts * m)


def routing_of(model: nn.Module) -> list[Routing]:
    """The routing every MoE layer of `model` used in its last forward pass."""
    return [layer.last_routing for layer in moe_layers(model) if layer.last_routing is not None]


def load_imbalance(load: torch.Tensor) -> torch.Tensor:
    """Busiest expert's load over the mean load, along the last dimension: 1.0 is perfect balance,
    n_experts means one expert took everything."""
    load = load.float()
    return load.amax(dim=-1) / load.mean(dim=-1)


class ExpertLoadRecorder:
    """Counts the assignments each expert of each MoE layer receives, forward pass by forward pass,
    through forward hooks (so it works around any training loop):

        with ExpertLoadRecorder(model) as recorder:
            trainer.run()
        recorder.loads()  # (forward passes, layers, experts)

    `training_only=True` ignores passes in eval mode (evaluations, samples).
    """

    def __init__(self, model: nn.Module, training_only: bool = True):
        self.layers = moe_layers(model)
        if not self.layers:
            raise ValueError("model has no MoE layers (is config.n_experts > 0?)")
        self.training_only = training_only
        self.history: list[list[torch.Tensor]] = [[] for _ in self.layers]
        self._handles = []

    def _hook(self, index: int):
        def record(module, args, output):
            if module.training or not self.training_only:
                self.history[index].append(module.last_routing.load().cpu())
        return record

    def __enter__(self) -> "ExpertLoadRecorder":
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def loads(self) -> torch.Tensor:
        """(forward passes, layers, experts) int64 counts."""
        if not self.history[0]:
            return torch.zeros(0, len(self.layers), self.layers[0].n_experts, dtype=torch.int64)
        return torch.stack([torch.stack(h) for h in self.history], dim=1)

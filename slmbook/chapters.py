"""The book's fifteen chapters: number, notebook name, title, what the reader sees, and modules.

One table for everything that lists chapters: the README's chapter table and badges, chapter 0's
map of the package, the notebook runner and the convention test that names missing chapters.
"""

from __future__ import annotations

from dataclasses import dataclass

REPOSITORY = "slmbook/slmbook"  # GitHub owner/name; Colab and Binder links are built from it
BRANCH = "main"


@dataclass(frozen=True)
class Chapter:
    number: int
    slug: str
    title: str
    sees: str  # what the reader sees in the notebook
    modules: tuple[str, ...]  # slmbook modules that carry the chapter's ideas (chapter 0's map)
    support: tuple[str, ...] = ()  # modules first used here that serve the ideas (loaders, formats, tools)

    @property
    def notebook(self) -> str:
        return f"{self.number:02d}_{self.slug}.ipynb"

    @property
    def colab_url(self) -> str:
        return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/notebooks/{self.notebook}"

    @property
    def binder_url(self) -> str:
        return (f"https://mybinder.org/v2/gh/{REPOSITORY}/{BRANCH}"
                f"?urlpath=lab/tree/notebooks/{self.notebook}")


CHAPTERS = (
    Chapter(0, "from_scratch", "Building from scratch and setting up",
            "the path from tokens to a trained Qwen, your machine's report, a map of the package",
            ("env", "data", "chapters", "notebooks"), ("exercises", "widgets")),
    Chapter(1, "neural_networks", "Neural-network foundations",
            "forward and backward by hand, activations, optimizers racing on a loss surface",
            ("neural", "optimizers")),
    Chapter(2, "pytorch", "PyTorch",
            "tensors, views, einsum, broadcasting, autograd, modules, state_dict, DataLoader, autocast, GPU moves",
            ("env", "hardware")),
    Chapter(3, "gpus", "GPUs: FLOPS, VRAM and memory",
            "CPU vs GPU, tensor cores, a measured roofline, what fills VRAM (estimated vs measured), choosing a GPU",
            ("memory", "flops", "hardware"), ("dtypes",)),
    Chapter(4, "data", "Data: curation, deduplication and scaling laws",
            "TinyStories cleaned and deduplicated, a Chinchilla plot with the book's models",
            ("data", "curation", "scaling")),
    Chapter(5, "language_models", "Language models",
            "n-gram models of TinyStories: smoothing, perplexity, samples; scaling, emergence and small custom models",
            ("ngram", "metrics")),
    Chapter(6, "tokenizers", "Tokenizers",
            "BPE merge by merge, WordPiece and Unigram, digits, spelling and languages, a vocabulary study",
            ("tokenizer", "bpe", "subword", "dataloader"), ("tinystories_tokenizer",)),
    Chapter(7, "embeddings_rope", "Embeddings, positional encodings and RoPE",
            "encodings drawn, RoPE rotating a query under a slider",
            ("positional",)),
    Chapter(8, "attention", "Attention",
            "attention step by step in a trained model, heatmaps of every head, previous-token and induction heads",
            ("attention",)),
    Chapter(9, "kv_cache", "KV cache, MQA and GQA",
            "sampling rules, KV-cache memory and speed for MHA, GQA and MQA, trained GQA/MQA quality compared",
            ("kv_cache", "generation")),
    Chapter(10, "norms_swiglu_residuals", "RMSNorm, SwiGLU and residuals",
            "the block drawn, RMSNorm vs LayerNorm and their cost, SwiGLU vs GELU, deep stacks with(out) residuals",
            ("norms", "feedforward", "gradient_flow")),
    Chapter(11, "qwen", "Building Qwen",
            "one block from its parts, the model counted, a plain training loop, the reader's stories, real Qwen3",
            ("qwen", "config"), ("hf_interop", "hub", "pretrained", "qwen_tokenizer")),
    Chapter(12, "quantization", "Quantization",
            "number formats from their bits, int8/int4 and bitsandbytes on our model, perplexity table",
            ("number_formats", "quantization"), ("evaluation",)),
    Chapter(13, "mixture_of_experts", "Mixture of experts",
            "a router step by step, expert-load heatmaps, dense vs MoE loss curves",
            ("moe",)),
    Chapter(14, "training", "Training small language models in practice",
            "your own Qwen trained on TinyStories on a GPU: loss curves, throughput, stories",
            ("training", "fused_loss", "checkpoint", "train", "distributed"),
            ("training_config", "train_cli", "prepare", "story_quality")),
)


def chapter(key: int | str) -> Chapter:
    """A chapter by number (7 or '07') or by notebook name ('07_embeddings_rope[.ipynb]')."""
    text = str(key).removesuffix(".ipynb")
    for ch in CHAPTERS:
        if text in (str(ch.number), f"{ch.number:02d}", ch.notebook.removesuffix(".ipynb")):
            return ch
    raise ValueError(
        f"notebook={key!r} is not a chapter; allowed: 0-14, '00'-'14' or a name like "
        f"{CHAPTERS[7].notebook!r}"
    )


def module_path(module: str):
    """slmbook/<module>.py, or slmbook/<module>/__init__.py for a subpackage (exercises)."""
    from pathlib import Path

    here = Path(__file__).parent
    return here / module / "__init__.py" if (here / module).is_dir() else here / f"{module}.py"


def module_summary(module: str) -> str | None:
    """First line of `slmbook.<module>`'s docstring, read from its source without importing it;
    None while the module is not written yet."""
    import ast

    path = module_path(module)
    if not path.is_file():
        return None
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    return doc.strip().splitlines()[0] if doc else ""


def package_map() -> list[tuple[int, str, str]]:
    """(chapter, module, summary) for every module a chapter names; summary says if it is missing."""
    rows = []
    for ch in CHAPTERS:
        for module in ch.modules:
            summary = module_summary(module)
            rows.append((ch.number, f"slmbook.{module}", "(not written yet)" if summary is None else summary))
    return rows


def draw_book_path():
    """A figure of the path the book walks: from text to tokens to a trained Qwen, with chapters."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    steps = [
        ("raw text\n(TinyStories)", "4"), ("tokenizer\n(BPE)", "6"), ("token ids", "5, 6"),
        ("embeddings\n+ RoPE", "7"), ("N × block:\nRMSNorm,\nGQA attention,\nRMSNorm,\nSwiGLU", "8–11"),
        ("RMSNorm\n→ LM head", "10, 11"), ("next-token\nprobabilities", "5"),
        ("training loop\nAdamW, bf16\non a GPU", "1–3, 14"), ("your trained\nQwen", "14"),
    ]
    fig, ax = plt.subplots(figsize=(13, 3.4))
    width, gap = 1.25, 0.25
    for i, (label, chapters) in enumerate(steps):
        x = i * (width + gap)
        ax.add_patch(FancyBboxPatch((x, 0.3), width, 1.2, boxstyle="round,pad=0.04",
                                    facecolor="#dbe9f6" if i < 7 else "#fde2c4", edgecolor="#33557a"))
        ax.text(x + width / 2, 0.9, label, ha="center", va="center", fontsize=8.5)
        ax.text(x + width / 2, 0.05, f"ch. {chapters}", ha="center", va="center", fontsize=8, color="#555")
        if i < len(steps) - 1:
            ax.annotate("", xy=(x + width + gap, 0.9), xytext=(x + width, 0.9),
                        arrowprops=dict(arrowstyle="->", color="#33557a"))
    ax.text(6 * (width + gap) + width / 2, 1.75, "ch. 9: KV cache · ch. 12: quantization · ch. 13: MoE",
            ha="center", fontsize=8.5, color="#33557a")
    ax.set_xlim(-0.2, len(steps) * (width + gap))
    ax.set_ylim(-0.2, 2.0)
    ax.axis("off")
    ax.set_title("What the book builds: from raw text to a trained Qwen-style model (chapter numbers below)")
    return fig


def readme_table() -> str:
    """The README's chapter table (kept in sync by tests/test_packaging.py)."""
    colab = "https://colab.research.google.com/assets/colab-badge.svg"
    binder = "https://mybinder.org/badge_logo.svg"
    lines = ["| # | chapter | what you see | open |", "|---|---|---|---|"]
    for ch in CHAPTERS:
        lines.append(f"| {ch.number:02d} | [{ch.title}](notebooks/{ch.notebook}) | {ch.sees} | "
                     f"[![Open In Colab]({colab})]({ch.colab_url}) [![Binder]({binder})]({ch.binder_url}) |")
    return "\n".join(lines)


README_TREE = ("<!-- package tree: generated by `python -m slmbook.chapters`, checked by tests/test_packaging.py -->",
               "<!-- end of package tree -->")


def package_tree() -> list[tuple[str, tuple[int, ...], str]]:
    """(file, chapters, summary) for every module of the package, once, in the order of the chapters:
    a module stands at the first chapter that names it (its ideas, then its support)."""
    chapters_of: dict[str, list[int]] = {}
    for ch in CHAPTERS:
        for module in ch.modules + ch.support:
            chapters_of.setdefault(module, [])
            if ch.number not in chapters_of[module]:
                chapters_of[module].append(ch.number)
    rows = []
    for module, numbers in chapters_of.items():
        path = module_path(module)
        name = f"{module}/" if path.name == "__init__.py" else path.name
        rows.append((name, tuple(numbers), module_summary(module) or "(not written yet)"))
    return rows


def readme_tree() -> str:
    """The README's package tree (between the README_TREE markers; kept in sync by tests/test_packaging.py)."""
    rows = package_tree()
    width = max(len(name) for name, _, _ in rows)
    chapter_width = max(len(", ".join(map(str, numbers))) for _, numbers, _ in rows) + 4
    lines = [README_TREE[0], "```text", "slmbook/"]
    for name, numbers, summary in rows:
        where = "ch. " + ", ".join(map(str, numbers))
        lines.append(f"  {name:<{width}}  {where:<{chapter_width}}  {summary}")
    lines += ["```", README_TREE[1]]
    return "\n".join(lines)


def update_readme(path=None) -> bool:
    """Write `readme_tree()` between the README_TREE markers of README.md; True if the file changed."""
    from pathlib import Path

    path = Path(path) if path is not None else Path(__file__).resolve().parent.parent / "README.md"
    text = path.read_text(encoding="utf-8")
    start, end = text.index(README_TREE[0]), text.index(README_TREE[1]) + len(README_TREE[1])
    new = text[:start] + readme_tree() + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    print("README.md " + ("updated" if update_readme() else "already up to date"))

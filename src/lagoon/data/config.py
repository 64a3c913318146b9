"""The ``[data]`` config section: how a shard set is built, and how training reads it.

Training needs only the top-level keys; ``[data] shards = "runs/demo/data"`` is enough (the natural
mixture, sequences of 256 tokens, 8 per global batch, at most 4 epochs of any leaf)::

    [data]                      loading: shards, mixture | weights, seq_len, global_batch_size, repetition_cap, seed
    [data.build]                workers, seed, quick, shard size
    [[data.sources]]            where documents come from (jsonl | parquet | text | embedded)
    [data.domains.NAME]         each domain's capability group and quality profile
    [data.curation]             hard filters, quality buckets, optional learned classifier
    [data.dedup]                exact and MinHash-LSH near-duplicate removal
    [data.tokenizer]            byte-level BPE vocabulary size and training sample
    [data.heldout]              held-out evaluation documents per domain
    [data.synthetic]            synthetic generators and their shares

With no ``[[data.sources]]`` the build uses the embedded default corpus (see `lagoon.data.embedded`), so
``lagoon data build configs/data_embedded.toml --out DIR`` and an empty ``[data]`` build the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lagoon.errors import check

CAPABILITY_GROUPS = ("code", "math", "stem", "general")
QUALITY_PROFILES = ("prose", "code", "structured")
EMBEDDED_SOURCES = ("stdlib_code", "stdlib_docs", "math", "tool_use")


@dataclass
class SourceConfig:
    """One source of documents."""

    kind: Literal["jsonl", "parquet", "text", "embedded"] = "embedded"
    """Reader: JSON lines (plain, .gz or .zst), Parquet, a folder of text/code files, or an embedded corpus."""
    name: str = ""
    """Name recorded as each document's ``source`` (default: the embedded name or the path)."""
    path: str = ""
    """File, folder or glob pattern to read (jsonl, parquet, text)."""
    embedded: str = ""
    """Embedded corpus for ``kind = "embedded"``: stdlib_code, stdlib_docs, math or tool_use."""
    domain: str = ""
    """Domain of every document from this source (a key of ``[data.domains]``)."""
    domain_field: str = ""
    """Record field holding each document's domain, instead of a fixed `domain` (jsonl, parquet)."""
    text_field: str = "text"
    """Record field holding the text (jsonl, parquet)."""
    id_field: str = "id"
    """Record field holding a document id; documents without one get ``SOURCE:FILE:ROW``."""
    include: list[str] = field(default_factory=lambda: ["*.py", "*.md", "*.rst", "*.txt"])
    """Glob patterns of files to read from a text folder (matched against file names)."""
    max_file_bytes: int = 1_000_000
    """Text folder files larger than this are skipped (generated tables, minified bundles)."""
    max_documents: int = 0
    """Stop after this many documents (0: no limit). For generated corpora, how many to generate."""
    max_bytes: int = 0
    """Stop after this many bytes of text (0: no limit)."""
    seed: int = 0
    """Seed of generated corpora (math, tool_use)."""

    def validate(self) -> None:
        if self.kind == "embedded":
            check(self.embedded in EMBEDDED_SOURCES, "embedded",
                  f"must be one of {', '.join(EMBEDDED_SOURCES)}; got {self.embedded!r}")
        else:
            check(bool(self.path), "path", f"a {self.kind} source needs a path")
        if self.kind == "embedded":
            check(bool(self.domain) and not self.domain_field, "domain", "an embedded source needs a domain")
        else:
            check(bool(self.domain) != bool(self.domain_field), "domain", "give exactly one of domain and domain_field")
        check(self.max_documents >= 0 and self.max_bytes >= 0, "max_documents", "limits must be >= 0")

    @property
    def label(self) -> str:
        return self.name or (self.embedded if self.kind == "embedded" else self.path)


@dataclass
class DomainConfig:
    """A domain: the unit that is quality-bucketed into leaves."""

    group: str = "general"
    """Capability group the domain's held-out documents evaluate (code, math, stem, general)."""
    quality: Literal["prose", "code", "structured"] = "prose"
    """Quality heuristics: prose (Gopher/C4 rules), code (StarCoder rules) or structured (generated text)."""

    def validate(self) -> None:
        check(self.group in CAPABILITY_GROUPS, "group", f"must be one of {', '.join(CAPABILITY_GROUPS)}; got {self.group!r}")


def default_domains() -> dict[str, DomainConfig]:
    return {
        "code": DomainConfig(group="code", quality="code"),
        "docs": DomainConfig(group="stem", quality="prose"),
        "math": DomainConfig(group="math", quality="structured"),
        "tool_use": DomainConfig(group="code", quality="structured"),
        "synth_code": DomainConfig(group="code", quality="structured"),
        "synth_chat": DomainConfig(group="general", quality="structured"),
    }


def default_sources() -> list[SourceConfig]:
    return [
        SourceConfig(kind="embedded", embedded="stdlib_code", domain="code"),
        SourceConfig(kind="embedded", embedded="stdlib_docs", domain="docs"),
        SourceConfig(kind="embedded", embedded="math", domain="math", max_documents=6000),
        SourceConfig(kind="embedded", embedded="tool_use", domain="tool_use", max_documents=3000),
    ]


@dataclass
class ClassifierConfig:
    """Optional learned quality classifier: reference text vs random corpus text (GPT-3 paper, Appendix A)."""

    enabled: bool = False
    """Train the classifier and blend its probability into every quality score."""
    reference_domains: list[str] = field(default_factory=lambda: ["docs"])
    """Domains whose documents are the positive ("reference") class; negatives are a random corpus sample."""
    weight: float = 0.5
    """Share of the final score that comes from the classifier (the rest is the heuristic score)."""
    max_examples: int = 4000
    """Documents per class used to fit it."""

    def validate(self) -> None:
        check(0.0 <= self.weight <= 1.0, "weight", f"must be in [0, 1], got {self.weight}")
        check(self.max_examples >= 10, "max_examples", "must be at least 10")


@dataclass
class CurationConfig:
    """Hard filters, quality scoring and bucketing."""

    buckets: int = 3
    """Quality quantile buckets per domain; every bucket is kept as its own leaf (q1 = best)."""
    min_chars: int = 64
    """Documents shorter than this are dropped."""
    max_chars: int = 2_000_000
    """Documents longer than this are dropped."""
    max_duplicate_line_fraction: float = 0.5
    """Drop documents whose lines are more than this fraction repeats (Gopher uses 0.3 for web prose)."""
    prose_min_words: int = 30
    """Prose: minimum words (Gopher rules: 50 for web pages)."""
    prose_min_stop_words: int = 2
    """Prose: minimum occurrences of common English stop words (Gopher rules)."""
    prose_min_alpha_word_fraction: float = 0.6
    """Prose: minimum fraction of words containing a letter (Gopher rules: 0.8 for web pages)."""
    code_max_line_length: int = 1000
    """Code: drop files with any longer line (StarCoder §3.1)."""
    code_max_mean_line_length: float = 100.0
    """Code: drop files with a longer mean line (StarCoder §3.1)."""
    code_min_alphanumeric_fraction: float = 0.25
    """Code: drop files with fewer alphanumeric characters (StarCoder §3.1)."""
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    """Optional learned quality classifier."""

    def validate(self) -> None:
        check(1 <= self.buckets <= 16, "buckets", f"must be between 1 and 16, got {self.buckets}")
        check(0 <= self.min_chars < self.max_chars, "min_chars", "must be >= 0 and below max_chars")
        for name in ("max_duplicate_line_fraction", "prose_min_alpha_word_fraction", "code_min_alphanumeric_fraction"):
            check(0.0 <= getattr(self, name) <= 1.0, name, "must be in [0, 1]")


@dataclass
class DedupConfig:
    """Exact and near-duplicate removal (MinHash LSH, Broder 1997; datasketch)."""

    exact: bool = True
    """Drop documents whose whitespace- and case-normalised text repeats an earlier one."""
    near: bool = True
    """Drop documents whose estimated Jaccard similarity to an earlier one reaches `threshold`."""
    threshold: float = 0.8
    """Jaccard similarity of word shingles at which two documents are near duplicates (0.8: Gopher, FineWeb)."""
    num_perm: int = 128
    """MinHash permutations (estimate error ≈ 1/sqrt(num_perm))."""
    shingle_words: int = 5
    """Words per shingle (5-grams as in Gopher/FineWeb)."""
    seed: int = 1
    """Seed of the MinHash permutations."""

    def validate(self) -> None:
        check(0.0 < self.threshold <= 1.0, "threshold", f"must be in (0, 1], got {self.threshold}")
        check(16 <= self.num_perm <= 1024, "num_perm", "must be between 16 and 1024")
        check(1 <= self.shingle_words <= 32, "shingle_words", "must be between 1 and 32")


@dataclass
class TokenizerConfig:
    """Byte-level BPE trained with Hugging Face tokenizers."""

    vocab_size: int = 4096
    """Tokens including the 32 reserved special ids (4096 = the tiny model preset's vocabulary)."""
    sample_bytes: int = 8_000_000
    """Bytes of training text sampled (evenly across domains) to learn the merges."""
    min_frequency: int = 2
    """Pairs seen fewer times are never merged."""

    def validate(self) -> None:
        check(256 + 32 < self.vocab_size <= 1 << 20, "vocab_size", f"must be between 289 and 2^20, got {self.vocab_size}")
        check(self.sample_bytes >= 10_000, "sample_bytes", "must be at least 10000")


@dataclass
class HeldoutConfig:
    """Held-out evaluation documents, never in training shards."""

    fraction: float = 0.03
    """Fraction of each domain's documents held out."""
    max_bytes: int = 400_000
    """At most this many bytes of text held out per domain."""
    min_documents: int = 2
    """At least this many documents held out per domain (when it has twice as many)."""

    def validate(self) -> None:
        check(0.0 <= self.fraction < 0.5, "fraction", f"must be in [0, 0.5), got {self.fraction}")
        check(self.max_bytes >= 0 and self.min_documents >= 0, "max_bytes", "must be >= 0")


@dataclass
class GeneratorConfig:
    """One synthetic generator."""

    kind: Literal["code_exercises", "rephrase"] = "code_exercises"
    """code_exercises: pipeline-heavy (extract signatures, docstrings, doctests; recompose into exercises).
    rephrase: seed-heavy (rewrite a seed document as Q&A, a list or a dialogue)."""
    domain: str = "synth_code"
    """Domain the generated documents belong to."""
    seed_domains: list[str] = field(default_factory=lambda: ["code"])
    """Domains whose training documents seed the generator."""
    share: float = 0.07
    """Target share of the final corpus (bytes) for this generator's output."""
    backend: Literal["template", "endpoint"] = "template"
    """rephrase only: offline templates, or an OpenAI-compatible chat endpoint."""
    endpoint: str = "http://localhost:11434/v1"
    """Base URL of the OpenAI-compatible API (Ollama, vLLM, lagoon serve)."""
    model: str = "laguna-xs.2"
    """Model name sent to the endpoint."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (sent only when set)."""
    concurrency: int = 4
    """Requests in flight at once."""
    timeout_s: float = 120.0
    """Seconds before a request is retried."""
    max_tokens: int = 1024
    """Completion length limit per request."""
    temperature: float = 0.7
    """Sampling temperature."""

    def validate(self) -> None:
        check(0.0 <= self.share < 1.0, "share", f"must be in [0, 1), got {self.share}")
        check(self.concurrency >= 1, "concurrency", "must be at least 1")
        check(bool(self.seed_domains), "seed_domains", "must name at least one domain")


def default_generators() -> list[GeneratorConfig]:
    # Laguna XS.2's mix is about 13% synthetic (Poolside); split between the two ends of the spectrum.
    return [
        GeneratorConfig(kind="code_exercises", domain="synth_code", seed_domains=["code"], share=0.07),
        GeneratorConfig(kind="rephrase", domain="synth_chat", seed_domains=["docs"], share=0.06),
    ]


@dataclass
class SyntheticConfig:
    """Synthetic data generators; each writes its own domain."""

    enabled: bool = True
    """Run the generators."""
    generators: list[GeneratorConfig] = field(default_factory=default_generators)
    """The generators, each with its own domain and share."""

    def validate(self) -> None:
        total = sum(g.share for g in self.generators) if self.enabled else 0.0
        check(total < 0.9, "generators", f"shares sum to {total:.2f}; they must leave room for natural data")


@dataclass
class BuildConfig:
    """Build-wide settings."""

    workers: int = 0
    """Worker processes (0: one per CPU core, at most 8)."""
    seed: int = 0
    """Seed of sampling decisions (held-out choice, tokenizer sample, synthetic seeds)."""
    quick: bool = False
    """Build about 5% of the embedded corpus (seconds, not minutes): for tests and smoke runs."""
    shard_tokens: int = 1 << 27
    """Tokens per shard file before a leaf starts a new one."""

    def validate(self) -> None:
        check(0 <= self.workers <= 256, "workers", "must be between 0 and 256")
        check(self.shard_tokens >= 1024, "shard_tokens", "must be at least 1024")


@dataclass
class DataConfig:
    """The data pipeline: building a shard set, and reading it in training."""

    shards: str = ""
    """Directory of a built shard set (``lagoon data build ... --out DIR``) that training reads."""
    mixture: str = ""
    """Mixture file (TOML or JSON, see `lagoon.data.mixture`); empty with no `weights`: the natural mixture."""
    weights: dict[str, float] = field(default_factory=dict)
    """Inline mixture weights over leaves (instead of a `mixture` file)."""
    seq_len: int = 256
    """Tokens per training sequence."""
    global_batch_size: int = 8
    """Sequences per optimizer step, over all data-parallel ranks."""
    repetition_cap: float = 4.0
    """Most epochs any leaf may be read; the loader stops with an error beyond it."""
    seed: int = 0
    """Seed of the loader's shuffling."""

    build: BuildConfig = field(default_factory=BuildConfig)
    """Build-wide settings."""
    sources: list[SourceConfig] = field(default_factory=list)
    """Document sources; empty: the embedded default corpus."""
    domains: dict[str, DomainConfig] = field(default_factory=default_domains)
    """Domains and their capability groups."""
    curation: CurationConfig = field(default_factory=CurationConfig)
    """Filters, quality scoring and buckets."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    """Duplicate removal."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Tokenizer training."""
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)
    """Held-out evaluation sets."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Synthetic data."""

    def validate(self) -> None:
        check(self.seq_len >= 1, "seq_len", f"must be positive, got {self.seq_len}")
        check(self.global_batch_size >= 1, "global_batch_size", f"must be positive, got {self.global_batch_size}")
        check(self.repetition_cap > 0, "repetition_cap", f"must be positive, got {self.repetition_cap}")
        check(not (self.mixture and self.weights), "weights", "give either a mixture file or inline weights, not both")
        for leaf, weight in self.weights.items():
            check(weight >= 0, f"weights.{leaf}", f"must be >= 0, got {weight}")
        for i, source in enumerate(self.effective_sources()):
            if source.domain:
                check(source.domain in self.domains, f"sources[{i}].domain",
                      f"unknown domain {source.domain!r}; add it under [data.domains] ({', '.join(self.domains)})")
        if self.synthetic.enabled:
            for i, generator in enumerate(self.synthetic.generators):
                where = f"synthetic.generators[{i}]"
                check(generator.domain in self.domains, f"{where}.domain", f"unknown domain {generator.domain!r}")
                for seed_domain in generator.seed_domains:
                    check(seed_domain in self.domains, f"{where}.seed_domains", f"unknown domain {seed_domain!r}")
        for name in self.domains:
            check(name.replace("_", "").replace("-", "").isalnum(), f"domains.{name}",
                  "domain names may use letters, digits, '_' and '-' only")

    def effective_sources(self) -> list[SourceConfig]:
        """The configured sources, or the embedded default."""
        return self.sources or default_sources()

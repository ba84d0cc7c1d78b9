"""A model argument, classified once where it enters (`ModelSpec.of`) and passed down: loading, the
tokenizer, the config and the fingerprint read its kind instead of each re-classifying a string.

Kinds, in the order a string is tried: `package:NAME` (a model shipped in a Python package,
models/packaged.py), a LoRA adapter folder (models/adapters.py), a `.gguf` file (models/gguf.py), a local
model folder (anything that exists or can only be a path, models/files.py), else a hub id. The options that
travel with a model (revision, tokenizer, adapter base, merge precision, the safety flags) are its
`LoadOptions`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from .adapters import Adapter, is_adapter, read_adapter
from .files import is_local
from .gguf import is_gguf
from .packaged import is_packaged, lookup


@dataclass(frozen=True)
class LoadOptions:
    """How models are loaded; mirrors the CLI flags --allow-pickle, --trust-remote-code, --allow-nonfinite,
    --tokenizer (for checkpoints shipped without one: MUSE's muse-bench models use Llama-2-7b's) and
    --revision (a hub commit, branch or tag, pinned for every hub id and recorded in the outputs);
    --adapter-base and --merge-dtype for LoRA adapter folders (models/adapters.py)."""

    allow_pickle: bool = False
    trust_remote_code: bool = False
    allow_nonfinite: bool = False
    tokenizer: str | None = None
    revision: str | None = None
    adapter_base: str | None = None
    merge_dtype: str = "auto"


class Kind(str, Enum):
    PACKAGE = "package"
    ADAPTER = "adapter"
    GGUF = "gguf"
    FOLDER = "folder"
    HUB = "hub"


def kind_of(text: str) -> Kind:
    """What a model argument names (an unknown `package:` name is refused here, before any work)."""
    if is_packaged(text):
        lookup(text)
        return Kind.PACKAGE
    if is_adapter(text):
        return Kind.ADAPTER
    if is_gguf(text):
        return Kind.GGUF
    return Kind.FOLDER if is_local(text) else Kind.HUB


@dataclass(frozen=True)
class ModelSpec(os.PathLike):
    """One model argument: `name` as given (what messages and records show), its `kind`, and its options.
    A ModelSpec reads as its name wherever a path or string is expected (`str`, `Path`, `open`)."""

    name: str
    kind: Kind
    opts: LoadOptions = field(default_factory=LoadOptions)

    @classmethod
    def of(cls, model: str | Path | ModelSpec, opts: LoadOptions | None = None) -> ModelSpec:
        """The spec of a model argument; a ModelSpec passes through unchanged (its options kept)."""
        if isinstance(model, ModelSpec):
            return model
        text = str(model)
        return cls(text, kind_of(text), opts or LoadOptions())

    def __str__(self) -> str:
        return self.name

    def __fspath__(self) -> str:
        return self.name

    @property
    def path(self) -> Path:
        return Path(self.name)

    @property
    def local(self) -> bool:
        return self.kind is not Kind.HUB

    @property
    def revision(self) -> str | None:
        """The pinned hub revision; local models have none."""
        return self.opts.revision if self.kind is Kind.HUB else None

    def hub_kwargs(self) -> dict:
        return {"revision": self.revision} if self.revision else {}

    def adapter(self) -> Adapter:
        """The adapter folder, read and checked (its base as --adapter-base or its config names it)."""
        return read_adapter(self.name, self.opts.adapter_base)

    def base(self) -> ModelSpec:
        """An adapter's base model, with the same options."""
        return ModelSpec.of(self.adapter().base, self.opts)

    def with_name(self, name: str | Path) -> ModelSpec:
        """Another model (a package's converted folder, a merged copy) loaded with the same options."""
        return ModelSpec.of(str(name), self.opts)

"""The state manifest: the one definition of its format, and the state fingerprint it proves.

A manifest is a blob of canonical JSON ``{"format": "weightslab.state/2", "tensors":
{name: blob hash}, "meta": {...}}``: every tensor of an experiment's state (named
``model/…``, ``optim/…``, ``ledger/…``, ``sampler/…``, ``rng/…``) by the blob that holds
it, and the non-tensor part (optimizer hyper-parameters, architecture, model age).
The *state hash* of a set of tensor hashes is the SHA-256 of their canonical JSON,
so a checkpoint's manifest proves the fingerprint recorded with its event, and
*group hashes* say which part of a state differs.

Format versions (docs/dumps.md): ``weightslab.state/1`` names ``WLT1`` tensor blobs only (raw
values); ``weightslab.state/2`` may also name ``WLC1`` blobs (the same values, compact: per-sample
columns narrowed and compressed, a sampler's order as the generator state it was drawn from). Both
are read; a state whose fingerprint is built on blob hashes (version 1) is always written as
``weightslab.state/1``, since its blob hashes are its fingerprint.

Pure JSON and hashing: no torch, no SQL.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from weightslab.errors import IntegrityError
from weightslab.events.codec import canonical_json

__all__ = ["FORMAT", "FORMAT_COMPACT", "FORMATS", "GROUPS", "Manifest", "encode_manifest", "group_hashes", "parse_manifest", "state_digest",
           "state_hash", "uses_fast_digests"]

FORMAT = "weightslab.state/1"
#: Since 2026-12: tensor blobs may be ``WLC1`` (see :mod:`weightslab.history.tensorcodec`).
FORMAT_COMPACT = "weightslab.state/2"
#: The formats :func:`parse_manifest` reads.
FORMATS = (FORMAT, FORMAT_COMPACT)
#: The state groups, by tensor-name prefix.
GROUPS = ("model", "optim", "ledger", "sampler", "rng")
_PREFIXES = tuple(f"{g}/" for g in GROUPS)


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest: ``tensors`` (name → blob hash) and ``meta`` (the JSON part)."""

    tensors: dict[str, str]
    meta: dict[str, Any]
    format: str = FORMAT

    def fingerprint(self, fast_digests: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
        """The digest and per-group digests of the state this manifest describes (see :func:`state_digest`).

        A version-2 state is fingerprinted by its tensors' fast digests, which the manifest does not hold:
        pass them (computed from the tensor blobs, :func:`weightslab.history.fasthash.encoded_tensor_digest`).
        """
        if not uses_fast_digests(self.meta):
            return state_digest(self.tensors, self.meta)
        if fast_digests is None or fast_digests.keys() != self.tensors.keys():
            raise ValueError("a version-2 state's fingerprint needs the fast digest of every tensor it names")
        return state_digest(fast_digests, self.meta)

    def check_restorable(self, name: str = "manifest") -> Manifest:
        """Check that ``meta`` has the shape a restore reads (so restoring cannot fail on a missing key).

        Raises:
            IntegrityError: the optimizer part, the architecture or the model age is malformed.
        """
        opt = self.meta.get("optimizer")
        if not (isinstance(opt, dict) and isinstance(opt.get("class"), str)
                and isinstance(opt.get("param_groups"), list) and all(isinstance(g, dict) for g in opt["param_groups"])
                and isinstance(opt.get("tuple_keys"), list) and all(isinstance(k, str) for k in opt["tuple_keys"])
                and isinstance(opt.get("scalars"), dict)):
            raise _bad(name, "meta.optimizer must hold class, param_groups, tuple_keys and scalars")
        arch, age = self.meta.get("architecture"), self.meta.get("model_age")
        if not (isinstance(arch, list) and all(type(w) is int for w in arch)) or type(age) is not int:
            raise _bad(name, "meta.architecture must be a list of widths and meta.model_age an integer")
        return self


def _bad(name: str, what: str) -> IntegrityError:
    return IntegrityError(f"blob {name} is not a WeightsLab state manifest ({' or '.join(FORMATS)}): {what}; "
                          "the store is damaged or was tampered with")


def encode_manifest(tensors: Mapping[str, str], meta: Mapping[str, Any], format: str = FORMAT) -> bytes:
    """The manifest blob of a state: its tensors' blob hashes and its JSON part (``format``: one of
    :data:`FORMATS`; :data:`FORMAT_COMPACT` when some tensor blob may be ``WLC1``)."""
    if format not in FORMATS:
        raise ValueError(f"unknown manifest format {format!r}; one of {FORMATS}")
    return canonical_json({"format": format, "tensors": dict(tensors), "meta": dict(meta)}).encode()


def parse_manifest(raw: bytes | bytearray | memoryview, name: str = "manifest") -> Manifest:
    """Parse and check a manifest's bytes (JSON only: nothing is imported or unpickled).

    Raises:
        IntegrityError: not UTF-8 JSON, another format, a tensor name outside the known
            groups, or a hash that is not one.
    """
    from weightslab.history.blobs import check_hash

    try:
        manifest = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise IntegrityError(f"manifest {name} is not JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") not in FORMATS:
        raise _bad(name, "no 'format' of that name")
    tensors, meta = manifest.get("tensors"), manifest.get("meta", {})
    if not isinstance(tensors, dict) or not isinstance(meta, dict):
        raise _bad(name, "'tensors' and 'meta' must be objects")
    for tensor, digest in tensors.items():
        if not tensor.startswith(_PREFIXES):
            raise _bad(name, f"tensor name {tensor[:80]!r} is outside {', '.join(_PREFIXES)}")
        check_hash(digest)
    return Manifest(dict(tensors), dict(meta), str(manifest["format"]))


def state_hash(hashes: Mapping[str, str]) -> str:
    """The fingerprint of a whole state, from its per-tensor hashes."""
    return hashlib.sha256(_names_json(hashes).encode()).hexdigest()


def _names_json(hashes: Mapping[str, str]) -> str:
    """``canonical_json(hashes)`` for a flat map of text to text, without the general walk over values.

    Text that the general encoder would refuse (a NUL, which JSON writes as an escape, or a lone
    surrogate, which UTF-8 cannot hold) goes through :func:`canonical_json` itself, so the output,
    or the error, is always the same.
    """
    if all(type(k) is str and type(v) is str for k, v in hashes.items()):
        text = json.dumps(dict(hashes), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if "\\u0000" not in text:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                pass
            else:
                return text
    return canonical_json(dict(hashes))


def uses_fast_digests(meta: Mapping[str, Any] | None) -> bool:
    """Whether a state's fingerprint is built on fast tensor digests (version 2) rather than blob hashes."""
    return meta is not None and meta.get("fingerprint", 1) >= 2


def state_digest(tensor_hashes: Mapping[str, str], meta: Mapping[str, Any] | None) -> tuple[str, dict[str, str]]:
    """The fingerprint of a state: one digest, and one per group to say what differs.

    Version 1 (``meta`` without ``"fingerprint"``: experiments created before version 2) is built on
    each tensor's SHA-256 blob hash and covers the tensors only. Version 2 (``meta["fingerprint"] == 2``,
    recorded by every state of an experiment created since, and by its ``create`` event) is built on
    each tensor's fast digest (:mod:`weightslab.history.fasthash`: computed on the tensor's own device,
    ~10 GB/s on one CPU core) and covers the JSON part too, as the group ``meta``: the optimizer's
    hyper-parameters (a learning rate set between calls), the scheduler's and the grad scaler's state,
    the batch size. A log never mixes versions: reopening continues the version it was created with.
    """
    hashes = dict(tensor_hashes)
    groups: tuple[str, ...] = GROUPS
    if uses_fast_digests(meta):
        hashes["meta/state"] = hashlib.sha256(canonical_json(dict(meta)).encode()).hexdigest()
        groups = (*GROUPS, "meta")
    return state_hash(hashes), group_hashes(hashes, groups)


def group_hashes(hashes: Mapping[str, str], groups: Iterable[str] = GROUPS) -> dict[str, str]:
    """Fingerprint per group (model, optim, ledger, sampler, rng), to say *what* differs."""
    parts: dict[str, dict[str, str]] = {g: {} for g in groups}
    for k, v in hashes.items():
        part = parts.get(k.partition("/")[0])
        if part is not None:
            part[k] = v
    return {g: state_hash(part) for g, part in parts.items()}

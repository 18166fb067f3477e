"""What a model's GGUF file says about it: architecture, size, quantization, context, the shapes
that decide its memory. Read from the file's header only, never its tensor data.

The ``gguf`` package (llama.cpp's) gives the format's constants: value types, tensor block
sizes, file-type names. Its own ``GGUFReader`` parses every metadata array, which takes 11 s on
gemma-3 270M (a 262k-entry vocabulary): this module walks the header itself and keeps only the
length of long arrays, 0.1 s for the same file. ``gguf`` (and numpy under it) is imported on the
first read, in a worker thread, so it costs a gateway's start nothing.

:class:`ModelFiles` keeps what was read per file (path, size and modification time), so a file is
read once per change, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

logger = logging.getLogger(__name__)

Value = str | int | float | bool | list[Any]

_KEEP_ARRAY = 64  # items of an array kept (a vocabulary is only counted)
_MODEL_FLAGS = ("-m", "--model")
_BLOCK = re.compile(r"blk\.([0-9]{1,6})\.")
_MAX_LAYERS = 4096  # a block index past this is not a layer (a hostile file must not make a huge tuple)


class ModelFileError(Exception):
    """The file is missing, unreadable, or not a GGUF file."""


@dataclass(frozen=True)
class ModelFile:
    path: str
    size: int  # bytes
    mtime: float  # seconds since the epoch
    version: int
    metadata: Mapping[str, Value]  # arrays longer than 64 items keep their first 64
    array_lengths: Mapping[str, int]  # the full length of every array
    tensor_bytes: int  # the weights, as stored
    parameters: int  # elements of every tensor
    tensor_types: Mapping[str, int] = field(default_factory=dict)  # quantization name -> tensors of that type
    # Bytes of the tensors of each repeated block (``blk.N.*``), by N: what a device holding layer N
    # stores; and the bytes of every other tensor by name (token_embd, output, output_norm...).
    layer_bytes: tuple[int, ...] = ()
    other_bytes: Mapping[str, int] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch(self, key: str) -> Value | None:
        """An architecture-specific key: ``arch("context_length")`` is ``gemma3.context_length``."""
        return self.metadata.get(f"{self.architecture}.{key}")

    def arch_int(self, key: str) -> int | None:
        value = self.arch(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def context_length(self) -> int | None:
        """The context the model was trained for."""
        return self.arch_int("context_length")

    @property
    def quantization(self) -> str:
        """The file type's name as llama.cpp prints it (``Q4_K_M``, ``F16``...), or ``""``."""
        file_type = self.metadata.get("general.file_type")
        return _file_type_name(file_type) if isinstance(file_type, int) else ""

    @property
    def vocabulary(self) -> int | None:
        return self.array_lengths.get("tokenizer.ggml.tokens")

    @property
    def chat_template(self) -> str | None:
        template = self.metadata.get("tokenizer.chat_template")
        return template if isinstance(template, str) else None


def model_path(args: Sequence[str]) -> str | None:
    """The GGUF file in an engine's arguments (``-m PATH``, ``--model PATH`` or ``--model=PATH``;
    the last one, as llama-server reads them)."""
    items = list(args)
    found = None
    for i, arg in enumerate(items):
        name, has_value, value = arg.partition("=")
        if name in _MODEL_FLAGS:
            if has_value:
                found = value
            elif i + 1 < len(items):
                found = items[i + 1]
    return found


def read(path: str) -> ModelFile:
    """The header of the GGUF file at ``path`` (blocking: run it in a thread)."""
    try:
        stat = os.stat(path)
        with open(path, "rb") as stream:
            return _Header(stream).read(path, stat.st_size, stat.st_mtime)
    except (OSError, struct.error, UnicodeDecodeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{path}: {exc}") from exc


class ModelFiles:
    """What each model file says, read once per change of the file, in a worker thread."""

    def __init__(self) -> None:
        self._read: dict[str, tuple[tuple[int, float], ModelFile | None]] = {}
        self._reading: dict[str, asyncio.Future[ModelFile | None]] = {}
        self._missing: set[str] = set()  # paths already reported missing (routes polled every 30 s ask again)

    def known(self, path: str) -> ModelFile | None:
        """What was read of ``path`` (None: not yet, or it could not be)."""
        entry = self._read.get(path)
        return entry[1] if entry is not None else None

    async def get(self, path: str) -> ModelFile | None:
        """The file's header, read now if it changed since (None, logged, when it cannot be read)."""
        try:
            stat = os.stat(path)
        except OSError as exc:
            if path not in self._missing:
                self._missing.add(path)
                logger.warning("model file %s: %s", path, exc)
            return None
        self._missing.discard(path)
        stamp = (stat.st_size, stat.st_mtime)
        entry = self._read.get(path)
        if entry is not None and entry[0] == stamp:
            return entry[1]
        pending = self._reading.get(path)
        if pending is None:
            pending = self._reading[path] = asyncio.ensure_future(self._load(path, stamp))
        return await asyncio.shield(pending)

    async def _load(self, path: str, stamp: tuple[int, float]) -> ModelFile | None:
        try:
            info: ModelFile | None = await asyncio.to_thread(read, path)
        except ModelFileError as exc:
            logger.warning("model file %s cannot be read: %s", path, exc)
            info = None
        finally:
            self._reading.pop(path, None)
        self._read[path] = (stamp, info)
        return info


class _Header:
    """A sequential reader of a GGUF header, buffered in large reads."""

    _CHUNK = 4 * 1024 * 1024

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._buf = b""
        self._at = 0
        import gguf  # the format's constants (and numpy): imported on the first read only

        self._gguf = gguf

    def _need(self, n: int) -> None:
        while self._at + n > len(self._buf):
            more = self._stream.read(max(self._CHUNK, n))
            if not more:
                raise ValueError("the file ends inside its header")
            self._buf = self._buf[self._at :] + more
            self._at = 0

    def _unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        self._need(size)
        (value,) = struct.unpack_from(fmt, self._buf, self._at)
        self._at += size
        return value

    def _string(self) -> str:
        n = self._unpack("<Q")
        self._need(n)
        raw = self._buf[self._at : self._at + n]
        self._at += n
        return raw.decode("utf-8", "replace")

    def _scalar_format(self, kind: int) -> str:
        types = self._gguf.GGUFValueType
        formats: dict[int, str] = {
            types.UINT8: "<B",
            types.INT8: "<b",
            types.UINT16: "<H",
            types.INT16: "<h",
            types.UINT32: "<I",
            types.INT32: "<i",
            types.FLOAT32: "<f",
            types.BOOL: "<?",
            types.UINT64: "<Q",
            types.INT64: "<q",
            types.FLOAT64: "<d",
        }
        if kind not in formats:
            raise ValueError(f"unknown value type {kind}")
        return formats[kind]

    def _value(self, kind: int, key: str, lengths: dict[str, int]) -> Value:
        types = self._gguf.GGUFValueType
        if kind == types.STRING:
            return self._string()
        if kind != types.ARRAY:
            return self._unpack(self._scalar_format(kind))  # type: ignore[no-any-return]
        item_kind, count = self._unpack("<I"), self._unpack("<Q")
        lengths[key] = count
        if item_kind == types.STRING:
            items = [self._string() for _ in range(min(count, _KEEP_ARRAY))]
            for _ in range(count - len(items)):  # the rest is only skipped (a vocabulary)
                self._need(8)
                (n,) = struct.unpack_from("<Q", self._buf, self._at)
                self._at += 8
                self._skip(n)
            return items
        fmt = self._scalar_format(item_kind)
        size = struct.calcsize(fmt)
        kept = min(count, _KEEP_ARRAY)
        self._need(size * kept)
        values = [struct.unpack_from(fmt, self._buf, self._at + i * size)[0] for i in range(kept)]
        self._skip(size * count)
        return values

    def _skip(self, n: int) -> None:
        if self._at + n <= len(self._buf):
            self._at += n
            return
        while n > 0:
            self._need(min(n, self._CHUNK))
            step = min(n, len(self._buf) - self._at)
            self._at += step
            n -= step

    def read(self, path: str, size: int, mtime: float) -> ModelFile:
        self._need(4)
        if self._buf[:4] != b"GGUF":
            raise ValueError("not a GGUF file")
        self._at = 4
        version = self._unpack("<I")
        n_tensors, n_keys = self._unpack("<Q"), self._unpack("<Q")
        metadata: dict[str, Value] = {}
        lengths: dict[str, int] = {}
        for _ in range(n_keys):
            key = self._string()
            metadata[key] = self._value(self._unpack("<I"), key, lengths)
        quant_sizes = self._gguf.GGML_QUANT_SIZES
        quant_types = self._gguf.GGMLQuantizationType
        tensor_bytes = parameters = 0
        kinds: dict[str, int] = {}
        layers: dict[int, int] = {}
        others: dict[str, int] = {}
        for _ in range(n_tensors):
            name = self._string()
            dims = self._unpack("<I")
            elements = 1
            for _ in range(dims):
                elements *= self._unpack("<Q")
            kind = self._unpack("<I")
            self._unpack("<Q")  # offset
            block, type_size = quant_sizes[quant_types(kind)]
            nbytes = elements // block * type_size
            tensor_bytes += nbytes
            parameters += elements
            type_name = quant_types(kind).name
            kinds[type_name] = kinds.get(type_name, 0) + 1
            layer = _BLOCK.match(name)
            if layer is not None and int(layer.group(1)) < _MAX_LAYERS:
                index = int(layer.group(1))
                layers[index] = layers.get(index, 0) + nbytes
            else:
                others[name] = others.get(name, 0) + nbytes
        per_layer = tuple(layers.get(i, 0) for i in range(max(layers) + 1)) if layers else ()
        return ModelFile(
            path, size, mtime, version, metadata, lengths, tensor_bytes, parameters, kinds, per_layer, others
        )


def _file_type_name(file_type: int) -> str:
    """``general.file_type`` as llama.cpp names it: 15 is ``Q4_K_M``, 1 is ``F16``."""
    import gguf

    try:
        name = gguf.LlamaFileType(file_type).name
    except ValueError:
        return ""
    if name == "ALL_F32":
        return "F32"
    return name.removeprefix("MOSTLY_")

"""The GGUF header reader: what a model file says, read without its tensor data."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import gguf
import numpy as np
import pytest

from llmgw.modelfile import ModelFileError, ModelFiles, model_path, read


def write_model(path: Path, vocabulary: int = 300, context: int = 4096) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("Tiny Test")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_context_length(context)
    writer.add_block_count(2)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_token_list([f"t{i}" for i in range(vocabulary)])
    writer.add_chat_template("{{ messages }}")
    writer.add_tensor("a.weight", np.zeros((8, 32), dtype=np.float32))
    writer.add_tensor("b.weight", np.zeros((16,), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_header_says_what_the_model_is(tmp_path: Path) -> None:
    info = read(str(write_model(tmp_path / "m.gguf", vocabulary=300)))
    assert info.architecture == "llama"
    assert info.context_length == 4096 and info.arch_int("block_count") == 2
    assert info.arch_int("attention.head_count_kv") == 2
    assert info.quantization == "Q8_0"
    assert info.metadata["general.name"] == "Tiny Test"
    assert info.chat_template == "{{ messages }}"
    assert info.parameters == 8 * 32 + 16
    assert info.tensor_bytes == 8 * 32 * 4 + 16 * 2
    assert info.tensor_types == {"F32": 1, "F16": 1}
    # A long array is counted, and only its first items kept.
    assert info.vocabulary == 300
    assert info.metadata["tokenizer.ggml.tokens"] == [f"t{i}" for i in range(64)]
    assert info.size == os.path.getsize(tmp_path / "m.gguf")


@pytest.mark.parametrize("content", [b"", b"GGML\x03\x00\x00\x00", b"not a model at all"])
def test_a_file_that_is_not_gguf_is_an_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelFileError):
        read(str(path))


def test_a_header_cut_short_is_an_error(tmp_path: Path) -> None:
    whole = write_model(tmp_path / "m.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:200])
    with pytest.raises(ModelFileError, match="ends inside its header"):
        read(str(cut))


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError):
        read(str(tmp_path / "none.gguf"))


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (["-m", "/a.gguf", "-c", "8"], "/a.gguf"),
        (["--model", "/b.gguf"], "/b.gguf"),
        (["--model=/c.gguf"], "/c.gguf"),
        (["-c", "8", "-m"], None),
        (["-hf", "org/repo"], None),
        (["-m", "/first.gguf", "--model", "/last.gguf"], "/last.gguf"),
    ],
)
def test_the_model_file_is_found_in_the_engine_arguments(args: list[str], path: str | None) -> None:
    assert model_path(args) == path


def test_files_are_read_once_per_change(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf", context=4096)
    files = ModelFiles()

    async def go() -> None:
        first, again = await asyncio.gather(files.get(str(path)), files.get(str(path)))
        assert first is again and first is not None and first.context_length == 4096
        assert files.known(str(path)) is first
        assert await files.get(str(path)) is first  # unchanged: not read again
        write_model(path, context=8192)
        os.utime(path, (1, 1))  # a different modification time, whatever the clock's resolution
        changed = await files.get(str(path))
        assert changed is not None and changed is not first and changed.context_length == 8192
        assert await files.get(str(tmp_path / "missing.gguf")) is None

    asyncio.run(go())

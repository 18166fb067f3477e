"""The slot cache without sockets: launch keys, the index's decisions, the files on disk."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from llmgw.config import DEFAULT_TIMEOUTS, ModelConfig, Variant
from llmgw.config import SlotCache as SlotCacheConfig
from llmgw.slotcache.index import Entry, SlotIndex, common_prefix, pack
from llmgw.slotcache.keys import kv_args, launch_key
from llmgw.slotcache.store import SlotFileError, SlotStore, read_tokens


def variant(index: int, context: int, args: tuple[str, ...]) -> Variant:
    return Variant(index, "/bin/llama-server", args, context, "http://127.0.0.1:8000", DEFAULT_TIMEOUTS)


def model(name: str, *variants: Variant) -> ModelConfig:
    return ModelConfig(name, "llama.cpp", variants)


# ----------------------------------------------------------------------------- keys


def test_the_context_and_other_harmless_flags_do_not_change_the_key() -> None:
    base = ("-m", "/m.gguf", "-np", "1", "--swa-full")
    small = variant(1, 1024, args=(*base, "-c", "1024", "--port", "8001", "-t", "2", "--no-webui", "--ctx-size=1024"))
    large = variant(2, 8192, args=(*base, "--port", "8002", "-c", "8192", "--threads", "4", "--metrics"))
    m = model("m", small, large)
    assert launch_key(m, small) == launch_key(m, large)
    assert kv_args(small.args) == list(base)


@pytest.mark.parametrize(
    "extra",
    [("-np", "2"), ("--cache-type-k", "q8_0"), ("-fa", "on"), ("--rope-freq-base", "1e6"), ("--unknown-flag", "x")],
)
def test_flags_that_shape_the_kv_cache_change_the_key(extra: tuple[str, ...]) -> None:
    plain = variant(1, 1024, args=("-m", "/m.gguf"))
    other = variant(2, 2048, args=("-m", "/m.gguf", *extra))
    m = model("m", plain, other)
    assert launch_key(m, plain) != launch_key(m, other)


def test_two_models_on_one_file_do_not_share_files() -> None:
    v = variant(1, 1024, args=("-m", "/m.gguf"))
    assert launch_key(model("a", v), v) != launch_key(model("b", v), v)


# ----------------------------------------------------------------------------- index


def entry(name: str, tokens: list[int], used_at: float = 0.0, key: str = "k" * 16, size: int = 100) -> Entry:
    return Entry(name, key, "m", pack(tokens), size, used_at)


def test_common_prefix() -> None:
    assert common_prefix(pack([1, 2, 3]), pack([1, 2, 3, 4])) == 3
    assert common_prefix(pack([1, 2, 3]), pack([1, 2, 9, 4])) == 2
    assert common_prefix(pack(list(range(5000))), pack([*range(4321), -1])) == 4321
    assert common_prefix(pack([256]), pack([1])) == 0  # token boundaries, not bytes
    assert common_prefix(b"", pack([1])) == 0


def test_the_longest_prefix_of_the_prompt_is_restored() -> None:
    index = SlotIndex([entry("short", [1, 2]), entry("long", [1, 2, 3, 4]), entry("other", [9, 9, 9])])
    prompt = pack([1, 2, 3, 4, 5, 6])
    assert index.best("k" * 16, prompt, 6, 100) == (index.entries["long"], 4)
    assert index.best("k" * 16, prompt, 6, 100, exclude={"long"}) == (index.entries["short"], 2)
    assert index.best("x" * 16, prompt, 6, 100) is None  # another launch key


def test_a_file_sharing_most_of_its_tokens_qualifies_one_sharing_little_does_not() -> None:
    # The last answer was re-tokenized differently: the file's tail does not match, its head does.
    saved = entry("saved", [*range(100), 7, 7, 7])
    index = SlotIndex([saved])
    assert index.best("k" * 16, pack([*range(100), 5, 6]), 102, 1000) == (saved, 100)
    assert index.best("k" * 16, pack([*range(40), 5, 6]), 42, 1000) is None  # under half of the file


def test_a_file_larger_than_the_engine_context_is_never_chosen() -> None:
    index = SlotIndex([entry("big", list(range(3000)))])
    assert index.best("k" * 16, pack(list(range(3100))), 3100, 2048) is None
    assert index.best("k" * 16, pack(list(range(3100))), 3100, 4096) is not None


def test_without_the_prompt_tokens_the_latest_file_no_longer_than_the_prompt() -> None:
    index = SlotIndex(
        [entry("old", [1, 2], used_at=1), entry("new", [3, 4], used_at=2), entry("huge", [5] * 50, used_at=3)]
    )
    assert index.best("k" * 16, None, 10, 100) == (index.entries["new"], 0)


def test_a_new_file_replaces_the_files_it_extends() -> None:
    index = SlotIndex([entry("a", [1, 2]), entry("b", [1, 5]), entry("c", [1, 2], key="x" * 16)])
    dominated = index.add(entry("n", [1, 2, 3]))
    assert [e.name for e in dominated] == ["a"]
    assert set(index.entries) == {"b", "c", "n"}
    assert index.same_as("k" * 16, pack([1, 2, 3])) is index.entries["n"]


def test_least_recently_used_files_go_first_to_fit_the_budget() -> None:
    index = SlotIndex([entry("a", [1], 3, size=40), entry("b", [2], 1, size=40), entry("c", [3], 2, size=40)])
    assert [e.name for e in index.over_budget(100)] == ["b"]
    assert [e.name for e in index.over_budget(100, extra=40)] == ["b", "c"]
    assert [e.name for e in index.over_budget(50, keep="b")] == ["c", "a"]
    assert index.over_budget(120) == []


# ----------------------------------------------------------------------------- files


def slot_file(path: Path, tokens: list[int], per_token: int = 8) -> int:
    data = struct.pack("<III", 0x67677371, 2, len(tokens)) + pack(tokens) + bytes(per_token * len(tokens))
    path.write_bytes(data)
    return len(data)


def test_tokens_are_read_from_the_slot_file_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "s.bin"
    size = slot_file(path, [2, 10, 11])
    assert read_tokens(path, 3, size) == [2, 10, 11]
    with pytest.raises(SlotFileError):
        read_tokens(path, 4, size)  # the engine said another count
    with pytest.raises(SlotFileError):
        read_tokens(path, 3, size + 1)  # or another size: the file is cut short
    path.write_bytes(b"GGUF" + bytes(40))
    with pytest.raises(SlotFileError):
        read_tokens(path, 3, 44)
    with pytest.raises(SlotFileError):
        read_tokens(tmp_path / "missing.bin", 3, size)


def committed(store: SlotStore, tokens: list[int], key: str = "a" * 16) -> Entry:
    temp, name = store.new_temp(key)
    size = slot_file(store.dir / temp, tokens)
    new = Entry(name, key, "m", pack(tokens), size, 1000.0)
    store.commit(temp, new)
    return new


def test_saved_files_are_found_again_and_broken_ones_swept(tmp_path: Path) -> None:
    store = SlotStore(str(tmp_path))
    assert store.prepare()
    good = committed(store, [1, 2, 3])
    truncated = committed(store, [4, 5, 6])
    with (tmp_path / f"{truncated.name}.bin").open("r+b") as f:
        f.truncate(20)
    corrupt = committed(store, [7])
    (tmp_path / f"{corrupt.name}.json").write_text("{not json")
    orphan = committed(store, [8])
    (tmp_path / f"{orphan.name}.json").unlink()
    (tmp_path / f".tmp-{'b' * 16}-{'c' * 12}.bin").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("not ours")
    found = store.scan()
    assert [(e.name, e.tokens, e.used_at) for e in found] == [(good.name, pack([1, 2, 3]), 1000.0)]
    assert sorted(os.listdir(tmp_path)) == sorted([f"{good.name}.bin", f"{good.name}.json", "notes.txt"])


def test_a_failed_commit_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SlotStore(str(tmp_path))
    temp, name = store.new_temp("a" * 16)
    size = slot_file(tmp_path / temp, [1, 2])

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", full)
    with pytest.raises(OSError):
        store.commit(temp, Entry(name, "a" * 16, "m", pack([1, 2]), size, 1.0))
    assert os.listdir(tmp_path) == []


def test_a_directory_that_cannot_be_made_disables_the_cache(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert not SlotStore(str(tmp_path / "file" / "slots")).prepare()
    assert SlotStore(str(tmp_path / "file" / "slots")).scan() == []


def test_budget_in_bytes() -> None:
    assert SlotCacheConfig("/x", 1.5).max_bytes == int(1.5 * 1024 * 1024)

"""The shard byte layout (``_shards``): what ``encode_shard`` writes, ``ShardIndex`` reads back,
byte for byte what zarr itself writes for the same data, damage detected, keys round-tripped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from wsizarr.store._shards import (
    CHECKSUM_BYTES, ENTRY_BYTES, MISSING, ShardDamaged, ShardIndex, checksum, chunk_payload,
    encode_shard, has_chunk_checksums, index_size, is_standard, n_shards, pack_shard, parse_shard_key,
    received, shard_key,
)
from wsizarr.store._manifest import Manifest
from wsizarr.store._codecs import CODECS
from wsizarr.store._store import MASK_CODEC, create_store

SHARD = 8
PATCH = 32


def _pixels(n: int, seed: int = 0) -> np.ndarray:
    """``n`` tissue-like RGB patches: smooth colour gradients plus noise, never all white."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 60, PATCH, dtype=np.float32)
    base = 150 + ramp[None, :, None, None] + ramp[None, None, :, None] / 2
    noise = rng.normal(0, 6, (n, PATCH, PATCH, 3))
    return np.clip(base + noise + rng.integers(0, 30, (n, 1, 1, 3)), 0, 254).astype(np.uint8)


def _decoded(codec: str, payload: np.ndarray) -> np.ndarray:
    encoder = CODECS[codec].encoder()
    if encoder is None:
        return np.frombuffer(payload, np.uint8).reshape(PATCH, PATCH, 3)
    out = np.empty((PATCH, PATCH, 3), np.uint8)
    encoder.decode(payload, out=out)
    return out


@pytest.mark.parametrize("n", [SHARD, 3], ids=["full", "partial"])
@pytest.mark.parametrize("codec", sorted(CODECS))
def test_encode_then_parse_round_trips(codec, n):
    pixels = _pixels(n)
    data = encode_shard(pixels, SHARD, CODECS[codec].encoder())
    index = ShardIndex.parse(data, SHARD, whole=True)
    assert len(index) == SHARD
    assert index.to_bytes() == data[-index_size(SHARD):]
    for row in range(SHARD):
        chunk = index.chunk(row)
        assert (chunk is None) == (row >= n) == index.is_missing(row)
        if chunk is None:
            assert index.entries[row].tolist() == [MISSING, MISSING]
            continue
        offset, nbytes = chunk
        payload = chunk_payload(np.frombuffer(data, np.uint8)[offset:offset + nbytes])
        decoded = _decoded(codec, payload)
        if CODECS[codec].lossless:
            np.testing.assert_array_equal(decoded, pixels[row])
        else:
            mse = np.mean((decoded.astype(float) - pixels[row]) ** 2)
            assert 10 * np.log10(255**2 / mse) > 30  # q90 of H&E-like pixels
    assert index.stored().tolist() == [row < n for row in range(SHARD)]
    assert [row for row, _, _ in index.stored_chunks()] == list(range(n))
    # the chunks lie back to back from the first byte, the index right after them
    assert index.end() == len(data) - index_size(SHARD)
    offsets = [offset for _, offset, _ in index.stored_chunks()]
    assert offsets[0] == 0 and [index.row_at(offset) for offset in offsets] == list(range(n))
    assert index.row_at(len(data)) is None


def test_without_checksums_the_chunks_are_the_bare_payloads():
    pixels = _pixels(2)
    encoder = CODECS["zstd"].encoder()
    data = encode_shard(pixels, SHARD, encoder, checksums=False)
    index = ShardIndex.parse(data, SHARD, whole=True)
    for row, offset, nbytes in index.stored_chunks():
        assert data[offset:offset + nbytes] == bytes(encoder.encode(np.ascontiguousarray(pixels[row])))
    with_checksums = encode_shard(pixels, SHARD, encoder)
    assert len(with_checksums) == len(data) + 2 * CHECKSUM_BYTES


def test_an_empty_index_is_all_missing():
    index = ShardIndex.empty(4)
    assert len(index.to_bytes()) == index_size(4) == 4 * ENTRY_BYTES + CHECKSUM_BYTES
    assert not index.stored().any() and index.end() == 0 and index.chunk(0) is None
    index.set(2, 0, 10)
    assert index.chunk(2) == (0, 10) and not index.is_missing(2) and index.is_missing(1)
    assert ShardIndex.parse(index.to_bytes(), 4).chunk(2) == (0, 10)


def _zarr_written(tmp_path: Path, codec: str, pixels: np.ndarray, masks: np.ndarray) -> zarr.Group:
    """A store made by ``create_store`` (the store's own codecs), filled by zarr itself."""
    group = create_store(tmp_path / "z.zarr", Manifest("test", {}, SHARD, codec), patch_size=PATCH, masks=True)
    for name, values in (("patches", pixels), ("masks", masks)):
        array = group[name]
        array.resize(values.shape)
        array[:] = values
    return group


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_encode_shard_writes_what_zarr_writes(tmp_path, codec):
    n = SHARD + 3  # a full shard, then a partial last one
    pixels = _pixels(n, seed=1)
    masks = np.random.default_rng(2).integers(1, 4, (n, PATCH, PATCH)).astype(np.uint8)
    group = _zarr_written(tmp_path, codec, pixels, masks)
    for name, values, codec_of in (("patches", pixels, codec), ("masks", masks, MASK_CODEC)):
        array = group[name]
        assert is_standard(array) and has_chunk_checksums(array)
        keys = [shard_key(name, shard, array.ndim) for shard in range(n_shards(n, SHARD))]
        assert keys == [f"{name}/{key}" for key in array._iter_shard_keys()]  # zarr's own keys
        for shard, key in enumerate(keys):
            stored = (tmp_path / "z.zarr" / key).read_bytes()
            part = values[shard * SHARD:(shard + 1) * SHARD]
            assert stored == encode_shard(part, SHARD, CODECS[codec_of].encoder()), (name, shard)
        last = ShardIndex.parse((tmp_path / "z.zarr" / keys[1]).read_bytes(), SHARD)
        assert [last.is_missing(row) for row in range(SHARD)] == [row >= 3 for row in range(SHARD)]


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_pack_shard_of_stored_chunks_is_what_zarr_writes(tmp_path, codec):
    """Chunks taken out of zarr's shards (in another order, from two shards) and packed again
    are byte for byte the shard zarr writes for those pixels."""
    n = SHARD + 3
    pixels = _pixels(n, seed=3)
    _zarr_written(tmp_path / "a", codec, pixels, np.zeros((n, PATCH, PATCH), np.uint8))
    chunks = {}
    for shard in range(2):
        data = np.frombuffer((tmp_path / "a" / "z.zarr" / shard_key("patches", shard, 4)).read_bytes(), np.uint8)
        index = ShardIndex.parse(data, SHARD, whole=True)
        for row, offset, nbytes in index.stored_chunks():
            chunks[shard * SHARD + row] = data[offset:offset + nbytes]
    picked = [9, 0, 10, 4, 5]
    _zarr_written(tmp_path / "b", codec, pixels[picked], np.zeros((5, PATCH, PATCH), np.uint8))
    stored = (tmp_path / "b" / "z.zarr" / shard_key("patches", 0, 4)).read_bytes()
    assert pack_shard([chunks[i] for i in picked], SHARD) == stored


@pytest.mark.parametrize("where", ["entry", "checksum"])
def test_a_flipped_index_byte_is_detected(where):
    data = bytearray(encode_shard(_pixels(5), SHARD, CODECS["zstd"].encoder()))
    position = len(data) - index_size(SHARD) + 3 if where == "entry" else len(data) - 1
    data[position] ^= 0x01
    with pytest.raises(ShardDamaged, match="its index fails its checksum"):
        ShardIndex.parse(bytes(data), SHARD)
    with pytest.raises(ShardDamaged, match="its index fails its checksum"):
        ShardIndex.parse(np.frombuffer(bytes(data), np.uint8)[-index_size(SHARD):], SHARD)


def _span(chunk: tuple[int, int] | None) -> tuple[int, int]:
    assert chunk is not None
    return chunk[0], chunk[0] + chunk[1]


def test_a_flipped_chunk_byte_is_detected():
    data = bytearray(encode_shard(_pixels(5), SHARD, CODECS["zstd"].encoder()))
    index = ShardIndex.parse(bytes(data), SHARD, whole=True)
    offset, nbytes = index.chunk(2)
    data[offset + nbytes // 2] ^= 0x01
    chunks = np.frombuffer(bytes(data), np.uint8)
    with pytest.raises(ShardDamaged, match="fails its checksum: its bytes are damaged"):
        chunk_payload(chunks[offset:offset + nbytes])
    chunk_payload(chunks[slice(*_span(index.chunk(1)))])  # the others are intact
    with pytest.raises(ShardDamaged, match="fails its checksum"):
        chunk_payload(chunks[:2])  # shorter than a checksum


def test_a_truncated_shard_is_detected():
    data = encode_shard(_pixels(5), SHARD, CODECS["zstd"].encoder())
    size = index_size(SHARD)
    with pytest.raises(ShardDamaged, match="the shard file is missing"):
        ShardIndex.parse(None, SHARD)
    with pytest.raises(ShardDamaged, match="the shard file is empty"):
        ShardIndex.parse(b"", SHARD)
    with pytest.raises(ShardDamaged, match=f"truncated: {size - 1} bytes, shorter than its index"):
        ShardIndex.parse(data[-size + 1:], SHARD)
    with pytest.raises(ShardDamaged, match="its index fails its checksum"):
        ShardIndex.parse(data[: len(data) // 2], SHARD)  # the tail is not the index
    cut = data[: len(data) // 2] + data[-size:]  # the index survives, the chunks it points at do not
    ShardIndex.parse(cut, SHARD)  # its tail alone is intact ...
    with pytest.raises(ShardDamaged, match=f"truncated: {len(cut)} bytes, its index needs more"):
        ShardIndex.parse(cut, SHARD, whole=True)  # ... the whole file is not
    assert received(np.zeros(7, np.uint8), 7).size == 7
    with pytest.raises(ShardDamaged, match="the shard file is truncated"):
        received(np.zeros(6, np.uint8), 7)
    with pytest.raises(ShardDamaged, match="the shard file is missing"):
        received(None, 7)


def test_the_parsed_index_outlives_its_buffer():
    buffer = np.frombuffer(encode_shard(_pixels(3), SHARD, None), np.uint8).copy()
    index = ShardIndex.parse(buffer, SHARD, whole=True)
    expected = index.chunk(1)
    buffer[:] = 0  # a reader reuses its buffers for the next shard
    assert index.chunk(1) == expected


def test_checksum_is_zarrs_crc32c():
    assert checksum(b"123456789") == (0xE3069283).to_bytes(4, "little")  # the crc32c check value
    assert len(checksum(np.zeros(3, np.uint8))) == CHECKSUM_BYTES


def test_shard_counts():
    assert [n_shards(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


@pytest.mark.parametrize(("path", "shard", "ndim"), [("patches", 0, 4), ("masks", 12, 3), ("x", 3, 1)])
def test_shard_keys_round_trip(path, shard, ndim):
    key = shard_key(path, shard, ndim)
    assert key == f"{path}/c/{shard}" + "/0" * (ndim - 1)
    assert parse_shard_key(key) == (path, shard, ndim)


@pytest.mark.parametrize("key", [
    "zarr.json", "patches/zarr.json", "patches/c/1/0/1/0", "patches/c/01/0/0/0", "patches/c/x/0/0/0",
    "patches/c/²/0/0/0", "patches/c/-1/0/0/0", "patches/c/", "patches/c/1/0/0/0/", "patches/1/0/0/0",
])
def test_other_keys_are_not_shard_keys(key):
    assert parse_shard_key(key) is None

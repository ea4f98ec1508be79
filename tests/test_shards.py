"""Streaming texts, the sharded embedding cache and stage 1 over shards, on tiny real models."""

from pathlib import Path

import pytest
import torch

import xbt
from xbt.core.errors import XBTError
from xbt.core.hashing import text_keys
from xbt.data.texts import HashSet, iter_texts, unique_chunks
from xbt.method.config import Stage1Config
from xbt.method.fit import unique_texts
from xbt.method.losses import stage1_loss
from xbt.method.stage1 import _val_loss, train_projection
from xbt.models.embedding import embed_texts
from xbt.models.head import Projection
from xbt.models.shards import TensorPairs, embed_text_shards, read_shard


def test_every_text_source_streams_the_same_strings(tmp_path, captions_400):
    import datasets

    texts = captions_400[:50]
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(texts) + "\n\n", encoding="utf-8")
    table = datasets.Dataset.from_dict({"id": list(range(50)), "caption": texts})
    sources = [texts, (t for t in texts), path, table, table.to_iterable_dataset()]
    for source in sources:
        assert list(iter_texts(source)) == texts, type(source).__name__


def test_bad_text_streams_are_refused_with_the_fix(tmp_path):
    with pytest.raises(XBTError, match="single string"):
        list(iter_texts("a red circle"))
    with pytest.raises(XBTError, match=r"texts\[2\] is a int"):
        list(iter_texts(["a", "b", 3]))
    with pytest.raises(XBTError, match="does not exist"):
        list(iter_texts(tmp_path / "missing.txt"))


def test_hash_dedup_keeps_first_occurrences_in_order(captions_400):
    texts = captions_400 + captions_400[::-1] + captions_400[:7]
    chunks = list(unique_chunks(iter(texts), chunk_size=64, read_size=50))
    assert [t for c in chunks for t in c] == unique_texts(texts)
    assert all(len(c) == 64 for c in chunks[:-1]) and 1 <= len(chunks[-1]) <= 64
    seen = HashSet()
    h = text_keys(["x", "y", "x"])
    assert seen.add(h).tolist() == [True, True, False] and seen.add(h).tolist() == [False, False, False]
    assert len(seen) == 2


def test_shards_hold_the_embeddings_of_the_distinct_texts(old_new, captions_400, tmp_path):
    old, new = old_new
    shards = embed_text_shards(
        new, old, iter(captions_400 * 2), tmp_path, shard_rows=64, keep_texts=100, verbose=False
    )
    distinct = unique_texts(captions_400)
    assert len(shards) == len(distinct) and shards.read == 800 and shards.texts == distinct[:100]
    new_all, old_all = shards.head(len(shards))
    assert torch.allclose(new_all, embed_texts(new, distinct, cache=False, verbose=False), atol=1e-6)
    assert torch.allclose(old_all, embed_texts(old, distinct, cache=False, verbose=False), atol=1e-6)
    half = embed_text_shards(
        new, old, iter(captions_400), tmp_path / "fp16", shard_rows=64, dtype="float16", verbose=False
    )
    new16, _ = half.head(len(half))
    assert (
        new16.dtype == torch.float32 and torch.allclose(new16, new_all, atol=2e-3) and not torch.equal(new16, new_all)
    )


def test_interrupted_embedding_resumes_at_the_last_complete_shard(old_new, captions_400, tmp_path):
    old, new = old_new
    texts = unique_texts(captions_400)[:300]

    def dies_after(n):
        yield from texts[:n]
        raise KeyboardInterrupt  # the run is killed while reading its third chunk

    with pytest.raises(KeyboardInterrupt):
        embed_text_shards(new, old, dies_after(170), tmp_path, shard_rows=64, verbose=False)
    calls = []
    for enc in (old, new):
        enc.encode_text = lambda batch, enc=enc: (calls.append(len(batch)), type(enc).encode_text(enc, batch))[1]
    try:
        shards = embed_text_shards(new, old, texts, tmp_path, shard_rows=64, verbose=False)
    finally:
        del old.encode_text, new.encode_text
    assert sum(calls) == 2 * (300 - 2 * 64)  # both models, everything but the two complete shards
    fresh = embed_text_shards(new, old, texts, tmp_path / "fresh", shard_rows=64, verbose=False)
    for i in range(len(shards.rows)):
        for a, b in zip(shards.paths(i), fresh.paths(i)):
            assert a.name == b.name and torch.equal(read_shard(a), read_shard(b))


def test_damaged_shard_is_embedded_again(old_new, captions_400, tmp_path):
    old, new = old_new
    shards = embed_text_shards(new, old, captions_400[:100], tmp_path, shard_rows=64, verbose=False)
    good = read_shard(shards.paths(0)[0])
    shards.paths(0)[0].write_bytes(b"not a safetensors file")
    again = embed_text_shards(new, old, captions_400[:100], tmp_path, shard_rows=64, verbose=False)
    assert torch.equal(read_shard(again.paths(0)[0]), good)


def test_stage1_over_shards_equals_stage1_over_tensors(old_new, captions_400, tmp_path):
    old, new = old_new
    shards = embed_text_shards(new, old, captions_400, tmp_path, shard_rows=64, verbose=False)
    n, o = shards.head(len(shards))
    cfg = Stage1Config(epochs=3, batch_size=32, shuffle_buffer=96, hidden=64, noise_std=0.1)
    a, ha = train_projection(shards, None, cfg, verbose=False)
    b, hb = train_projection(TensorPairs(n, o, shard_rows=64), None, cfg, verbose=False)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert ha == hb and ha["n_train"] + ha["n_val"] == len(shards)
    # a buffer smaller than the corpus still learns: the held-out cosine rises above the Procrustes start
    assert max(ha["val_cosine"][1:]) > ha["procrustes_val_cosine"]


def test_validation_loss_does_not_grow_with_the_split(old_new, captions_400):
    old, new = old_new
    texts = unique_texts(xbt.toy.text_corpus(3000))
    n, o = embed_texts(new, texts, verbose=False), embed_texts(old, texts, verbose=False)
    proj = Projection(n.shape[1], o.shape[1], hidden=0)
    with torch.no_grad():
        proj.linear.weight.copy_(xbt.baselines.maps.orthogonal_procrustes(n, o))
    cfg = Stage1Config(val_block=500, noise_std=0.1)
    small, large = _val_loss(proj, n[:500], o[:500], cfg)[0], _val_loss(proj, n[:2500], o[:2500], cfg)[0]
    whole_small = stage1_loss(proj(n[:500]), o[:500], cfg.temperature, cfg.cosine_weight).item()
    whole_large = stage1_loss(proj(n[:2500]), o[:2500], cfg.temperature, cfg.cosine_weight).item()
    assert abs(large - small) < 0.1 * abs(whole_large - whole_small), (small, large, whole_small, whole_large)


def test_fit_reads_a_text_file_and_a_streaming_dataset_like_a_list(old_new, captions_400, tmp_path):
    import datasets

    old, new = old_new
    texts = captions_400[:200]
    path = Path(tmp_path / "c.txt")
    path.write_text("\n".join(texts), encoding="utf-8")
    stream = datasets.Dataset.from_dict({"text": texts}).to_iterable_dataset()
    ids = {xbt.fit(old, new, src, epochs=2, verbose=False, cache=False).adapter_id() for src in (texts, path, stream)}
    assert len(ids) == 1


def test_the_progress_bar_counts_texts_against_a_sized_corpus(old_new, captions_400, tmp_path, capsys):
    """A list's bar reads ``n/400 texts`` from the start (it read ``0text [00:00, ?text/s]``), repeats included, and
    the run says how many were distinct."""
    new, old = old_new
    texts = captions_400 + captions_400[:100]
    embed_text_shards(new, old, texts, tmp_path, shard_rows=64, verbose=True)
    captured = capsys.readouterr()
    assert "0/500 [" in captured.err and "texts/s]" in captured.err  # the total from the start, in texts
    assert f"read 500 texts, {len(set(texts)):,} distinct" in captured.out
